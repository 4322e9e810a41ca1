//! credential-store: the sasldb of authrelay.
//!
//! Users are `(name, realm)`. For each the store keeps one derived secret per
//! mechanism family — Argon2id for PLAIN/LOGIN, SCRAM StoredKey/ServerKey,
//! the CRAM-MD5 HMAC contexts, DIGEST-MD5's H(user:realm:password) — and
//! never the password. Only sasl-auth and the admin tools talk to it.

pub mod backend;
mod error;
pub mod names;
pub mod seal;

use std::collections::BTreeMap;
use std::sync::Arc;

use authrelay_config::{Config, CredentialBackend};
use authrelay_proto::credentials::v1 as pb;
use authrelay_proto::credentials::v1::credential_store_server::{
    CredentialStore, CredentialStoreServer,
};
use authrelay_sasl::{Mechanism, SecretFamily, SecretParams, StoredSecret, derive_secret};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

pub use backend::{
    Backend, FileBackend, PostgresBackend, PutMode, Store, Stored, UserRecord, UserSummary,
};
pub use error::StoreError;
pub use seal::Keyring;

/// The channel user changes are announced on (sasl-auth subscribes):
/// `REALM\0NAME`.
pub const CHANGES_CHANNEL: &str = "creds:changed";

pub struct CredentialService {
    store: Arc<Store>,
    default_families: Vec<SecretFamily>,
    params: SecretParams,
    /// `credential_store.realms`: where users may be created; empty = anywhere.
    realms: Vec<String>,
    /// What sasl-auth offers (same config): a listing shows only these.
    offered: Vec<Mechanism>,
    /// Where user changes are announced to sasl-auth's secret caches.
    changes: Option<authrelay_state::SharedState>,
}

impl CredentialService {
    pub fn new(backend: Backend, cfg: &Config) -> Result<Self, anyhow::Error> {
        let default_families = families_for(cfg.credential_store.default_mechanisms.iter())
            .map_err(|e| anyhow::anyhow!("credential_store.default_mechanisms: {e}"))?;
        let params = SecretParams {
            scram_iterations: cfg.credential_store.scram_iterations,
            argon2_m_cost_kib: cfg.credential_store.argon2_memory_kib,
            argon2_t_cost: cfg.credential_store.argon2_iterations,
            // DIGEST-MD5 clients hash their address with an offered realm.
            digest_realms: cfg.realms(),
            ..SecretParams::default()
        };
        Ok(CredentialService {
            store: Arc::new(Store::new(backend, Keyring::from_config(cfg)?)),
            default_families,
            params,
            realms: cfg
                .credential_store
                .realms
                .iter()
                .map(str::to_owned)
                .collect(),
            offered: cfg.offered_mechanisms(),
            changes: None,
        })
    }

    /// Announce every change of a user on `state` (sasl-auth's secret
    /// caches subscribe to it).
    pub fn announce_changes(mut self, state: authrelay_state::SharedState) -> Self {
        self.changes = Some(state);
        self
    }

    pub fn store(&self) -> Arc<Store> {
        self.store.clone()
    }

    /// Tell every sasl-auth replica to forget what it cached for this user,
    /// before the admin command that changed it returns. A failure is
    /// logged, not returned: the change itself is stored, and caches drop
    /// it at their TTL (sasl-auth also stops caching while it cannot hear
    /// the feed).
    async fn announce(&self, name: &str, realm: &str) {
        let Some(state) = &self.changes else { return };
        let mut msg = Vec::with_capacity(realm.len() + 1 + name.len());
        msg.extend_from_slice(realm.as_bytes());
        msg.push(0);
        msg.extend_from_slice(name.as_bytes());
        if let Err(e) = state.publish(CHANGES_CHANNEL, &msg).await {
            tracing::error!(error = %e, "user change not announced: sasl-auth caches may use the old secret until sasl.secret_cache_ttl");
        }
    }

    fn check_realm(&self, realm: &str) -> Result<(), StoreError> {
        names::check_realm(realm)?;
        if !self.realms.is_empty() && !self.realms.iter().any(|r| r == realm) {
            return Err(StoreError::InvalidRealm(
                "not one of credential_store.realms",
            ));
        }
        Ok(())
    }

    /// The mechanisms `families` let a user use, as offered here.
    fn usable(&self, families: &[SecretFamily]) -> Vec<String> {
        mechanisms_of(families)
            .into_iter()
            .filter(|m| self.offered.contains(m))
            .map(|m| m.name().to_owned())
            .collect()
    }
}

/// Mechanism names → the secret families they need.
pub fn families_for<'a>(
    mechs: impl Iterator<Item = &'a str>,
) -> Result<Vec<SecretFamily>, StoreError> {
    let mut out = Vec::new();
    for m in mechs {
        let family = Mechanism::from_name(m)
            .and_then(Mechanism::family)
            .ok_or_else(|| StoreError::UnknownMechanism(m.to_owned()))?;
        if !out.contains(&family) {
            out.push(family);
        }
    }
    out.sort();
    Ok(out)
}

/// The mechanisms a set of families allows, as `sasldblistusers` shows them.
pub fn mechanisms_of(families: &[SecretFamily]) -> Vec<Mechanism> {
    let mut m: Vec<Mechanism> = families
        .iter()
        .flat_map(|f| f.mechanisms().iter().copied())
        .collect();
    m.sort_by_key(|m| std::cmp::Reverse(m.strength()));
    m
}

#[tonic::async_trait]
impl CredentialStore for CredentialService {
    #[tracing::instrument(name = "credential-store GetSecret", skip_all, fields(family = %req.get_ref().family))]
    async fn get_secret(
        &self,
        req: Request<pb::GetSecretRequest>,
    ) -> Result<Response<pb::GetSecretResponse>, Status> {
        let r = req.into_inner();
        let family = SecretFamily::from_name(&r.family)
            .ok_or(StoreError::UnknownFamily(r.family.clone()))?;
        let secret = self
            .store
            .get_secret(&r.name, &r.realm, family)
            .await
            .inspect_err(|e| {
                if matches!(e, StoreError::Sealing(_)) {
                    tracing::error!(user = %r.name, realm = %r.realm, %family, error = %e, "secret refused");
                }
            })?;
        Ok(Response::new(pb::GetSecretResponse {
            found: secret.is_some(),
            secret: secret.as_ref().map(pb::Secret::from),
        }))
    }

    #[tracing::instrument(name = "credential-store PutUser", skip_all)]
    async fn put_user(
        &self,
        req: Request<pb::PutUserRequest>,
    ) -> Result<Response<pb::PutUserResponse>, Status> {
        let r = req.into_inner();
        names::check_name(&r.name)?;
        self.check_realm(&r.realm)?;
        names::check_password(&r.password)?;
        let mode = if r.create_only {
            PutMode::Create
        } else if r.mechanisms.is_empty() && r.keep_mechanisms {
            PutMode::KeepFamilies {
                default: self.default_families.clone(),
            }
        } else {
            PutMode::Replace
        };
        let families = match (&mode, r.mechanisms.is_empty()) {
            // Which families the user has is read inside the write
            // transaction; derive them all and let the backend keep those.
            (PutMode::KeepFamilies { .. }, _) => SecretFamily::ALL.to_vec(),
            (_, true) => self.default_families.clone(),
            (_, false) => families_for(r.mechanisms.iter().map(String::as_str))?,
        };
        // Argon2id and PBKDF2 are deliberately slow: off the async workers.
        let params = self.params.clone();
        let (name, realm, password) = (r.name.clone(), r.realm.clone(), r.password);
        let secrets: BTreeMap<SecretFamily, StoredSecret> =
            tokio::task::spawn_blocking(move || {
                families
                    .iter()
                    .map(|f| (*f, derive_secret(*f, &name, &realm, &password, &params)))
                    .collect()
            })
            .await
            .map_err(|e| StoreError::Backend(format!("derive: {e}")))?;
        let stored = self
            .store
            .put_user(
                UserRecord {
                    name: r.name.clone(),
                    realm: r.realm.clone(),
                    secrets,
                },
                mode,
            )
            .await?;
        self.announce(&r.name, &r.realm).await;
        tracing::info!(user = %r.name, realm = %r.realm, created = stored.created, "user stored");
        Ok(Response::new(pb::PutUserResponse {
            mechanisms: self.usable(&stored.families),
            created: stored.created,
        }))
    }

    #[tracing::instrument(name = "credential-store DeleteUser", skip_all)]
    async fn delete_user(
        &self,
        req: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        let r = req.into_inner();
        self.store.delete_user(&r.name, &r.realm).await?;
        self.announce(&r.name, &r.realm).await;
        tracing::info!(user = %r.name, realm = %r.realm, "user deleted");
        Ok(Response::new(pb::DeleteUserResponse {}))
    }

    #[tracing::instrument(name = "credential-store ListUsers", skip_all)]
    async fn list_users(
        &self,
        req: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let r = req.into_inner();
        let realm = Some(r.realm.as_str()).filter(|s| !s.is_empty());
        let users = self.store.list_users(realm).await?;
        Ok(Response::new(pb::ListUsersResponse {
            users: users
                .into_iter()
                .map(|u| pb::UserEntry {
                    mechanisms: self.usable(&u.families),
                    name: u.name,
                    realm: u.realm,
                })
                .collect(),
        }))
    }

    #[tracing::instrument(name = "credential-store ImportUser", skip_all)]
    async fn import_user(
        &self,
        req: Request<pb::ImportUserRequest>,
    ) -> Result<Response<pb::ImportUserResponse>, Status> {
        let r = req.into_inner();
        names::check_name(&r.name)?;
        self.check_realm(&r.realm)?;
        if r.secrets.is_empty() {
            return Err(StoreError::InvalidSecret("no secrets to import").into());
        }
        let mut secrets = BTreeMap::new();
        for s in r.secrets {
            let secret = StoredSecret::try_from(s).map_err(StoreError::InvalidSecret)?;
            if secrets.insert(secret.family(), secret).is_some() {
                return Err(StoreError::InvalidSecret("two secrets of one family").into());
            }
        }
        let mode = if r.replace {
            PutMode::Replace
        } else {
            PutMode::Create
        };
        let stored = self
            .store
            .put_user(
                UserRecord {
                    name: r.name.clone(),
                    realm: r.realm.clone(),
                    secrets,
                },
                mode,
            )
            .await?;
        self.announce(&r.name, &r.realm).await;
        tracing::info!(user = %r.name, realm = %r.realm, created = stored.created, "user imported");
        Ok(Response::new(pb::ImportUserResponse {
            mechanisms: self.usable(&stored.families),
            created: stored.created,
        }))
    }

    #[tracing::instrument(name = "credential-store Reseal", skip_all)]
    async fn reseal(
        &self,
        _req: Request<pb::ResealRequest>,
    ) -> Result<Response<pb::ResealResponse>, Status> {
        let (resealed, unchanged) = self.store.reseal().await?;
        let key_id = self.store.key_id().unwrap_or_default().to_owned();
        tracing::info!(resealed, unchanged, key_id = %key_id, "reseal done");
        Ok(Response::new(pb::ResealResponse {
            resealed,
            unchanged,
            key_id,
        }))
    }
}

/// Open the configured backend (migrating PostgreSQL).
pub async fn open_backend(cfg: &Config) -> Result<Backend, anyhow::Error> {
    Ok(match cfg.credential_store.backend {
        CredentialBackend::File => Backend::File(FileBackend::open(&cfg.credential_db_path())?),
        CredentialBackend::Postgres => Backend::Postgres(Box::new(
            PostgresBackend::connect(&cfg.credential_store.database_url, None).await?,
        )),
    })
}

/// Serve on `listener` until `shutdown` resolves.
pub async fn serve(
    cfg: Config,
    listener: Option<TcpListener>,
    service: Arc<CredentialService>,
    guard: authrelay_grpc_tls::guard::GuardLayer,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), anyhow::Error> {
    let backend = service.store();
    let (reporter, health) = tonic_health::server::health_reporter();
    let health_listen = cfg.internal_tls.health_listen;
    authrelay_grpc_tls::serve_plain_health("credential-store", health_listen, health.clone())
        .await?;
    // Readiness follows the backend: PostgreSQL down → NOT_SERVING.
    tokio::spawn(async move {
        loop {
            match backend.ping().await {
                Ok(()) => {
                    reporter
                        .set_serving::<CredentialStoreServer<CredentialService>>()
                        .await
                }
                Err(_) => {
                    reporter
                        .set_not_serving::<CredentialStoreServer<CredentialService>>()
                        .await
                }
            }
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        }
    });
    let unix = authrelay_grpc_tls::listen_unix(
        "credential-store",
        "credential_store.listen_unix",
        cfg.credential_store.listen_unix.as_deref(),
    )?;
    let tls = authrelay_grpc_tls::server_tls(&cfg)?;
    authrelay_grpc_tls::server()
        .layer(authrelay_telemetry::grpc::TraceLayer)
        .layer(guard)
        .add_service(health)
        .add_service(CredentialStoreServer::from_arc(service))
        .serve_with_incoming_shutdown(authrelay_grpc_tls::incoming(listener, unix, tls), shutdown)
        .await?;
    Ok(())
}

/// Open the configured backend and make the service, announcing user
/// changes on `changes` when given.
pub async fn open(
    cfg: &Config,
    changes: Option<authrelay_state::SharedState>,
) -> Result<Arc<CredentialService>, anyhow::Error> {
    let backend = open_backend(cfg).await?;
    let mut service = CredentialService::new(backend, cfg)?;
    if let Some(state) = changes {
        // A (re)started store may hold anything — a restored backup, other
        // keys: every sasl-auth forgets all it cached.
        if let Err(e) = state.publish(CHANGES_CHANNEL, b"*").await {
            tracing::warn!(error = %e, "could not tell sasl-auth caches to start over");
        }
        service = service.announce_changes(state);
    }
    Ok(Arc::new(service))
}

/// Bind the configured address, announce it, and serve until SIGTERM/SIGINT.
pub async fn main_with(cfg: Config) -> Result<(), anyhow::Error> {
    // Before anything else: a SIGTERM during start-up waits for it to finish.
    let shutdown = authrelay_telemetry::shutdown_signal();
    // sasl-auth caches secrets; it forgets a changed user when told so
    // through Redis. Without Redis, a changed password would keep working
    // from those caches until their TTL.
    if cfg.redis.url.is_empty() && cfg.sasl.secret_cache_size > 0 {
        anyhow::bail!(
            "configuration key `redis.url` is empty: credential-store announces user changes to sasl-auth's secret caches through Redis (or set sasl.secret_cache_size = 0)"
        );
    }
    let changes = if cfg.redis.url.is_empty() {
        None
    } else {
        Some(authrelay_state::SharedState::connect(&cfg.redis).await?)
    };
    let listener = TcpListener::bind(cfg.credential_store.listen).await?;
    authrelay_telemetry::announce("credential-store", "grpc", listener.local_addr()?);
    if let Some(addr) = cfg.telemetry.metrics_listen {
        authrelay_telemetry::announce(
            "credential-store",
            "metrics",
            authrelay_telemetry::metrics::serve(addr).await?,
        );
    }
    let guard = authrelay_grpc_tls::guard(&cfg)?;
    let service = open(&cfg, changes).await?;
    serve(cfg, Some(listener), service, guard, shutdown).await
}
