//! gRPC between the services, with `internal_tls.*` decided once.
//!
//! Off (the default), servers listen in plain text and clients dial
//! `http://`. On, every server requires a client certificate signed by
//! `internal_tls.ca` (rustls `WebPkiClientVerifier`), and every client
//! presents `internal_tls.cert` and checks the server's certificate against
//! the same CA and the host name of its `https://` endpoint. So a pod that
//! is not ours — or a NetworkPolicy gap — gets no answer from
//! credential-store, and no one can pose as sasl-auth to the frontends.
//!
//! The files are read again every `internal_tls.reload_every` while in use
//! (on a new connection, and by each client channel every second): when
//! cert-manager renews a Secret, the kubelet rewrites its files in place,
//! and new connections use the new certificate — servers for their next
//! handshake, clients by dialling every replica again — with no restart.
//! A renewal that does not make a usable set (a key that is not the
//! certificate's, caught half-written) is logged and the old set kept.
//! That is why servers do their own TLS accept (`incoming`) instead of
//! tonic's `ServerTlsConfig`, which is fixed when the server is built.
//!
//! The kubelet's gRPC probe cannot present a certificate:
//! `internal_tls.health_listen` serves the same `grpc.health.v1` statuses in
//! plain text on a port of its own, and nothing else.

pub mod api;
pub mod exchange;
pub mod guard;
mod incoming;

pub use incoming::{Conn, UnixBindError, bind_unix, incoming, listen_unix};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use authrelay_config::{Config, InternalTlsConfig};
use authrelay_proto::channel::ClientTlsSource;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity, Server};
use tonic_health::pb::health_server::{Health, HealthServer};

/// How long a TLS handshake may take, either side: an unfinished one must
/// not hold a connection slot forever.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why mutual TLS could not be set up; every variant names the key.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("configuration key `{key}`: is required when internal_tls.enabled is true")]
    Missing { key: &'static str },
    #[error("configuration key `{key}` = {path:?}: {why}")]
    File {
        key: &'static str,
        path: PathBuf,
        why: String,
    },
    /// The files read, but rustls refused them together (say, a key that
    /// is not the certificate's). rustls' text never holds key material.
    #[error("internal_tls: {0}")]
    Unusable(String),
    #[error("internal_tls: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("configuration key `internal_tls.health_listen` = \"{addr}\": {source}")]
    HealthBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The PEM files of `internal_tls`, as read.
#[derive(PartialEq, Eq)]
struct Pems {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Vec<u8>,
}

impl Pems {
    fn read(cfg: &InternalTlsConfig) -> Result<Pems, TlsError> {
        Ok(Pems {
            cert: read_pem(
                "internal_tls.cert",
                cfg.cert.as_deref(),
                PemKind::Certificates,
            )?,
            key: read_pem("internal_tls.key", cfg.key.as_deref(), PemKind::PrivateKey)?,
            ca: read_pem("internal_tls.ca", cfg.ca.as_deref(), PemKind::Certificates)?,
        })
    }

    /// Both sides' settings. Client certificates are required, not
    /// optional: a handshake without one fails before any gRPC is read.
    /// Only our CA is trusted (no web roots).
    fn build(&self) -> Result<(Arc<rustls::ServerConfig>, ClientTlsConfig), TlsError> {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let bad = |e: &dyn std::fmt::Display| TlsError::Unusable(e.to_string());
        let certs = |pem: &[u8]| -> Result<Vec<CertificateDer<'static>>, TlsError> {
            rustls_pemfile::certs(&mut &pem[..])
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(&e))
        };
        let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &self.key[..])
            .ok()
            .flatten()
            .ok_or_else(|| TlsError::Unusable("internal_tls.key holds no private key".into()))?;
        let mut roots = rustls::RootCertStore::empty();
        for ca in certs(&self.ca)? {
            roots.add(ca).map_err(|e| bad(&e))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|e| bad(&e))?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(&e))?
            .with_client_cert_verifier(verifier)
            // Also checks that the key is the certificate's.
            .with_single_cert(certs(&self.cert)?, key)
            .map_err(|e| bad(&e))?;
        // gRPC is HTTP/2; tonic's clients insist on having negotiated it.
        server.alpn_protocols = vec![b"h2".to_vec()];
        let client = ClientTlsConfig::new()
            .identity(Identity::from_pem(&self.cert, &self.key))
            .ca_certificate(Certificate::from_pem(&self.ca))
            .timeout(HANDSHAKE_TIMEOUT);
        Ok((Arc::new(server), client))
    }
}

struct Loaded {
    checked: Instant,
    pems: Pems,
    generation: u64,
    server: Arc<rustls::ServerConfig>,
    client: ClientTlsConfig,
}

/// The certificate, key and CA of `internal_tls`, read and checked, and
/// read again every `reload_every` while in use.
pub struct InternalTls {
    cfg: InternalTlsConfig,
    loaded: Mutex<Loaded>,
}

impl InternalTls {
    /// `None` when `internal_tls.enabled` is false. At start a missing or
    /// unusable file is an error naming its key.
    pub fn load(cfg: &InternalTlsConfig) -> Result<Option<Arc<InternalTls>>, TlsError> {
        if !cfg.enabled {
            return Ok(None);
        }
        let pems = Pems::read(cfg)?;
        let (server, client) = pems.build()?;
        Ok(Some(Arc::new(InternalTls {
            cfg: cfg.clone(),
            loaded: Mutex::new(Loaded {
                checked: Instant::now(),
                pems,
                generation: 0,
                server,
                client,
            }),
        })))
    }

    /// The settings, after reading the files again if `reload_every` has
    /// passed. Later, a file that cannot be used keeps the previous set:
    /// refusing every connection would be worse than an old certificate.
    fn fresh(&self) -> MutexGuard<'_, Loaded> {
        let mut l = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if l.checked.elapsed() < self.cfg.reload_every {
            return l;
        }
        l.checked = Instant::now();
        match Pems::read(&self.cfg) {
            Ok(pems) if pems == l.pems => {}
            Ok(pems) => match pems.build() {
                Ok((server, client)) => {
                    l.pems = pems;
                    l.server = server;
                    l.client = client;
                    l.generation += 1;
                    tracing::info!(
                        generation = l.generation,
                        "internal_tls: renewed certificate files taken for new connections"
                    );
                }
                Err(e) => tracing::warn!(
                    error = %e,
                    "internal_tls: the files changed but do not make a usable set; keeping the previous one"
                ),
            },
            Err(e) => tracing::warn!(
                error = %e,
                "internal_tls: cannot read the files again; keeping the previous ones"
            ),
        }
        l
    }

    /// The server side, for the next handshake.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.fresh().server.clone()
    }
}

impl ClientTlsSource for InternalTls {
    fn current(&self) -> (u64, ClientTlsConfig) {
        let l = self.fresh();
        (l.generation, l.client.clone())
    }
}

enum PemKind {
    Certificates,
    PrivateKey,
}

fn read_pem(key: &'static str, path: Option<&Path>, kind: PemKind) -> Result<Vec<u8>, TlsError> {
    let path = path.ok_or(TlsError::Missing { key })?;
    let file = |why: String| TlsError::File {
        key,
        path: path.to_owned(),
        why,
    };
    let pem = std::fs::read(path).map_err(|e| file(e.to_string()))?;
    let mut rd = &pem[..];
    match kind {
        PemKind::Certificates => {
            let n = rustls_pemfile::certs(&mut rd)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| file(format!("not PEM: {e}")))?
                .len();
            if n == 0 {
                return Err(file("holds no PEM certificate".into()));
            }
        }
        PemKind::PrivateKey => {
            // Never put key material in the error: only whether one was found.
            match rustls_pemfile::private_key(&mut rd) {
                Ok(Some(_)) => {}
                Ok(None) => return Err(file("holds no PEM private key".into())),
                Err(_) => return Err(file("is not a readable PEM private key".into())),
            }
        }
    }
    Ok(pem)
}

/// A lazily connected, per-request balanced channel to `urls`, with the
/// client side of `internal_tls` (see `authrelay_proto::channel`).
pub fn channel(cfg: &Config, urls: &[String], timeout: Duration) -> Result<Channel, String> {
    let tls = InternalTls::load(&cfg.internal_tls)
        .map_err(|e| e.to_string())?
        .map(|t| t as Arc<dyn ClientTlsSource>);
    authrelay_proto::channel::balanced_channel(urls, timeout, tls)
}

/// The replicas behind `urls` as they come and go, a channel each, with
/// the client side of `internal_tls`: see
/// `authrelay_proto::channel::replica_set`.
pub fn replica_set(
    cfg: &Config,
    urls: &[String],
    timeout: Duration,
) -> Result<tokio::sync::watch::Receiver<Arc<Vec<authrelay_proto::channel::Replica>>>, String> {
    let tls = InternalTls::load(&cfg.internal_tls)
        .map_err(|e| e.to_string())?
        .map(|t| t as Arc<dyn ClientTlsSource>);
    authrelay_proto::channel::replica_set(urls, timeout, tls)
}

/// One channel per replica behind `urls` (labelled with its address), with
/// the client side of `internal_tls`: see
/// `authrelay_proto::channel::replica_channels`.
pub async fn replica_channels(
    cfg: &Config,
    urls: &[String],
    timeout: Duration,
) -> Result<Vec<(String, Channel)>, String> {
    let tls = InternalTls::load(&cfg.internal_tls)
        .map_err(|e| e.to_string())?
        .map(|t| t as Arc<dyn ClientTlsSource>);
    authrelay_proto::channel::replica_channels(urls, timeout, tls).await
}

/// What every separate service does before it serves: refuse to run when
/// no caller could be authenticated (neither `internal_tls` nor
/// `internal.token_file`), present the internal token on its own calls,
/// and return the layer that checks every call it takes
/// ([`guard::Policy`]).
pub fn guard(cfg: &Config) -> Result<guard::GuardLayer, anyhow::Error> {
    let policy = guard::Policy::from_config(cfg)?;
    if !policy.authenticates_services() {
        anyhow::bail!(
            "configuration key `internal.token_file` is not set and internal_tls is off: the services could not tell each other from any other local process (set a token file shared by every service, e.g. `openssl rand -hex 32`, or turn on internal_tls; only `authrelay serve` needs neither)"
        );
    }
    if let Some(t) = guard::read_token(cfg.internal.token_file.as_deref(), "internal.token_file")? {
        authrelay_telemetry::grpc::present_internal_token(&t).map_err(anyhow::Error::msg)?;
    }
    Ok(guard::GuardLayer::new(policy))
}

/// A gRPC server builder. TLS, when on, is done by [`incoming`]: give it
/// [`server_tls`].
pub fn server() -> Server {
    Server::builder()
}

/// The server side of `internal_tls` for [`incoming`]; `None` when off.
pub fn server_tls(cfg: &Config) -> Result<Option<Arc<InternalTls>>, TlsError> {
    InternalTls::load(&cfg.internal_tls)
}

/// With `internal_tls.health_listen` set (`addr`), serve `health` — the
/// same reporter's statuses as the main port — in plain text there until
/// the process ends, and announce it as `SERVICE listening on ADDR (grpc
/// health)`. Returns the bound address.
pub async fn serve_plain_health<H: Health>(
    service: &str,
    addr: Option<SocketAddr>,
    health: HealthServer<H>,
) -> Result<Option<SocketAddr>, TlsError> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| TlsError::HealthBind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| TlsError::HealthBind { addr, source })?;
    authrelay_telemetry::announce(service, "grpc health", local);
    tokio::spawn(async move {
        let served = Server::builder()
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "plain-text health port stopped");
        }
    });
    Ok(Some(local))
}

#[cfg(test)]
mod tests;
