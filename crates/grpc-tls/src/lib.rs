//! gRPC between the services, with `internal_tls.*` decided once.
//!
//! Off (the default), servers listen in plain text and clients dial
//! `http://`. On, every server requires a client certificate signed by
//! `internal_tls.ca` (rustls `WebPkiClientVerifier`, through tonic's
//! `ServerTlsConfig`), and every client presents `internal_tls.cert` and
//! checks the server's certificate against the same CA and the host name of
//! its `https://` endpoint. So a pod that is not ours — or a NetworkPolicy
//! gap — gets no answer from credential-store, and no one can pose as
//! sasl-auth to the frontends.
//!
//! The kubelet's gRPC probe cannot present a certificate:
//! `internal_tls.health_listen` serves the same `grpc.health.v1` statuses in
//! plain text on a port of its own, and nothing else.

mod incoming;

pub use incoming::{Conn, UnixBindError, bind_unix, incoming, listen_unix};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use authrelay_config::{Config, InternalTlsConfig};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity, Server, ServerTlsConfig};
use tonic_health::pb::health_server::{Health, HealthServer};

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
    #[error("internal_tls: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("configuration key `internal_tls.health_listen` = \"{addr}\": {source}")]
    HealthBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The certificate, key and CA of `internal_tls`, read and checked.
#[derive(Clone)]
pub struct InternalTls {
    identity: Identity,
    ca: Certificate,
}

impl InternalTls {
    /// `None` when `internal_tls.enabled` is false.
    pub fn load(cfg: &InternalTlsConfig) -> Result<Option<InternalTls>, TlsError> {
        if !cfg.enabled {
            return Ok(None);
        }
        let cert = read_pem(
            "internal_tls.cert",
            cfg.cert.as_deref(),
            PemKind::Certificates,
        )?;
        let key = read_pem("internal_tls.key", cfg.key.as_deref(), PemKind::PrivateKey)?;
        let ca = read_pem("internal_tls.ca", cfg.ca.as_deref(), PemKind::Certificates)?;
        Ok(Some(InternalTls {
            identity: Identity::from_pem(cert, key),
            ca: Certificate::from_pem(ca),
        }))
    }

    /// Client certificates are required, not optional (tonic's default):
    /// a handshake without one fails before any gRPC is read.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.ca.clone())
            // An unfinished handshake must not hold a connection slot forever.
            .timeout(Duration::from_secs(10))
    }

    /// Only our CA is trusted (no web roots): a server certificate from any
    /// other authority is refused even if publicly valid.
    pub fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .identity(self.identity.clone())
            .ca_certificate(self.ca.clone())
            .timeout(Duration::from_secs(10))
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
        .map(|t| t.client_config());
    authrelay_proto::channel::balanced_channel(urls, timeout, tls.as_ref())
}

/// A gRPC server builder with the server side of `internal_tls`.
pub fn server(cfg: &Config) -> Result<Server, TlsError> {
    let builder = Server::builder();
    Ok(match InternalTls::load(&cfg.internal_tls)? {
        Some(tls) => builder.tls_config(tls.server_config())?,
        None => builder,
    })
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
