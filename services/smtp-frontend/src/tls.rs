//! TLS for the listeners: rustls, TLS 1.2 and 1.3 only, certificate and key
//! from PEM files — or, for `authrelay serve`'s quick start, a self-signed
//! certificate made once in the data directory so STARTTLS works with no
//! set-up.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use authrelay_config::Config;
use std::sync::RwLock;
use std::time::SystemTime;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::ResolvesServerCert;
use rustls::sign::CertifiedKey;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "frontend.tls: no certificate configured (set frontend.tls.cert and frontend.tls.key, or frontend.tls.disabled = true)"
    )]
    NoCertificate,
    #[error("{path}: {why}")]
    File { path: PathBuf, why: String },
    #[error("TLS set-up: {0}")]
    Rustls(#[from] rustls::Error),
}

fn file_err(path: &Path, why: impl ToString) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        why: why.to_string(),
    }
}

/// What TLS the frontend runs with.
pub enum TlsSetup {
    Disabled,
    Enabled(Arc<ServerConfig>, Arc<ReloadingCert>),
}

/// Build the server TLS configuration. `self_signed_ok`: with no certificate
/// configured, make (once) and use a self-signed one under `data_dir/tls`.
/// The certificate is re-read when its files change (a Kubernetes Secret
/// rotation) — see [`ReloadingCert`]; call [`ReloadingCert::watch`].
pub fn setup(cfg: &Config, self_signed_ok: bool) -> Result<TlsSetup, TlsError> {
    if cfg.frontend.tls.disabled {
        return Ok(TlsSetup::Disabled);
    }
    let (cert, key) = match (&cfg.frontend.tls.cert, &cfg.frontend.tls.key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ if self_signed_ok => self_signed(cfg)?,
        _ => return Err(TlsError::NoCertificate),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let resolver = Arc::new(ReloadingCert::new(cert, key, provider.clone())?);
    // Safe defaults are exactly TLS 1.2 and 1.3.
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &cfg.frontend.tls.client_ca {
        // Client certificates are optional: asked for, verified when given,
        // and then EXTERNAL is offered; a client without one goes on as usual.
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).map_err(|e| file_err(ca, e))? {
                roots
                    .add(c.map_err(|e| file_err(ca, e))?)
                    .map_err(|e| file_err(ca, e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| file_err(ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder.with_cert_resolver(resolver.clone());
    Ok(TlsSetup::Enabled(Arc::new(config), resolver))
}

fn load_key(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_err(cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(cert, e))?;
    if certs.is_empty() {
        return Err(file_err(cert, "no certificate in file"));
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, e))?;
    CertifiedKey::from_der(certs, der, provider).map_err(|e| file_err(key, e))
}

fn mtimes(cert: &Path, key: &Path) -> Option<(SystemTime, SystemTime)> {
    Some((
        std::fs::metadata(cert).ok()?.modified().ok()?,
        std::fs::metadata(key).ok()?.modified().ok()?,
    ))
}

/// The server certificate, re-read when its files change: new handshakes
/// get the new certificate, established sessions keep theirs, no restart.
/// A broken new pair (half-written Secret) is ignored until it is whole.
#[derive(Debug)]
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    stamp: RwLock<Option<(SystemTime, SystemTime)>>,
}

impl ReloadingCert {
    pub fn new(
        cert: PathBuf,
        key: PathBuf,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, TlsError> {
        let stamp = mtimes(&cert, &key);
        let current = load_key(&cert, &key, &provider)?;
        Ok(ReloadingCert {
            cert,
            key,
            provider,
            current: RwLock::new(Arc::new(current)),
            stamp: RwLock::new(stamp),
        })
    }

    /// Reload if the files' modification times changed; true when reloaded.
    pub fn reload_if_changed(&self) -> bool {
        let now = mtimes(&self.cert, &self.key);
        if now.is_none() || now == *self.stamp.read().unwrap_or_else(|p| p.into_inner()) {
            return false;
        }
        match load_key(&self.cert, &self.key, &self.provider) {
            Ok(k) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(k);
                *self.stamp.write().unwrap_or_else(|p| p.into_inner()) = now;
                tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "TLS certificate changed but does not load; keeping the old one");
                false
            }
        }
    }

    /// Poll the files every two seconds, for the life of the process.
    pub async fn watch(self: Arc<Self>) {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            self.reload_if_changed();
        }
    }

    /// SHA-256 of the current leaf certificate: RFC 5929 tls-server-end-point
    /// for SHA-256-signed certificates (the ones we make and expect).
    pub fn end_point_hash(&self) -> Vec<u8> {
        use sha2::Digest;
        let cur = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        cur.cert
            .first()
            .map(|c| sha2::Sha256::digest(c.as_ref()).to_vec())
            .unwrap_or_default()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

/// The identity in a verified client certificate: its first e-mail
/// subjectAltName, else its subject CN.
pub fn client_identity(cert: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::prelude::*;
    let (_, x) = X509Certificate::from_der(cert.as_ref()).ok()?;
    if let Ok(Some(san)) = x.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::RFC822Name(email) = name {
                return Some((*email).to_owned());
            }
        }
    }
    x.subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()
        .map(str::to_owned)
}

fn self_signed(cfg: &Config) -> Result<(PathBuf, PathBuf), TlsError> {
    let dir = cfg.data_dir.join("tls");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    // The key's directory 0700 and the key 0600, whatever the umask;
    // tightened when found open.
    authrelay_telemetry::private_fs::private_dir(&dir).map_err(|e| file_err(&dir, e))?;
    if cert.exists() && key.exists() {
        authrelay_telemetry::private_fs::private_file(&key).map_err(|e| file_err(&key, e))?;
        return Ok((cert, key));
    }
    let names = vec![
        cfg.hostname.clone(),
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
    ];
    let made = rcgen::generate_simple_self_signed(names).map_err(|e| file_err(&cert, e))?;
    write_private(&key, made.signing_key.serialize_pem().as_bytes())?;
    write_private(&cert, made.cert.pem().as_bytes())?;
    tracing::warn!(
        cert = %cert.display(),
        "no TLS certificate configured: made a self-signed one (set frontend.tls.cert/key for production)"
    );
    Ok((cert, key))
}

/// Mode 0600 whatever the umask, also over a file a torn earlier attempt
/// left (only one of the pair existed).
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    let mut f =
        authrelay_telemetry::private_fs::open_private_file(path).map_err(|e| file_err(path, e))?;
    f.write_all(bytes).map_err(|e| file_err(path, e))
}

/// RFC 9266 `tls-exporter` channel binding: 32 bytes of keying material
/// under the label "EXPORTER-Channel-Binding" with an empty context. Only
/// defined for TLS 1.3 (for 1.2 it lacks the extended master secret guarantee).
pub fn tls_exporter(conn: &rustls::ServerConnection) -> Option<Vec<u8>> {
    if conn.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
        return None;
    }
    let mut out = vec![0u8; 32];
    conn.export_keying_material(&mut out, b"EXPORTER-Channel-Binding", Some(&[]))
        .ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn the_self_signed_certificate_is_made_private_once_and_its_key_kept_private() {
        let dir = std::env::temp_dir().join(format!("authrelay-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = Config {
            data_dir: dir.join("data"),
            ..Config::default()
        };
        let (cert, key) = self_signed(&cfg).unwrap();
        assert_eq!(mode(&dir.join("data")), 0o700);
        assert_eq!(mode(&dir.join("data/tls")), 0o700);
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(&cert), 0o600);
        let pem = std::fs::read(&key).unwrap();
        // Made once: a second start takes it, and tightens a key left open.
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(self_signed(&cfg).unwrap(), (cert, key.clone()));
        assert_eq!(std::fs::read(&key).unwrap(), pem);
        assert_eq!(mode(&key), 0o600);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
