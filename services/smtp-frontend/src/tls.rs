//! TLS for the listeners: rustls, TLS 1.2 and 1.3 only, certificate and key
//! from PEM files — or, for `authrelay serve`'s quick start, a self-signed
//! certificate made once in the data directory so STARTTLS works with no
//! set-up.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use authrelay_config::Config;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

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
    Enabled(Arc<ServerConfig>),
}

/// Build the server TLS configuration. `self_signed_ok`: with no certificate
/// configured, make (once) and use a self-signed one under `data_dir/tls`.
pub fn setup(cfg: &Config, self_signed_ok: bool) -> Result<TlsSetup, TlsError> {
    if cfg.frontend.tls.disabled {
        return Ok(TlsSetup::Disabled);
    }
    let (cert, key) = match (&cfg.frontend.tls.cert, &cfg.frontend.tls.key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ if self_signed_ok => self_signed(cfg)?,
        _ => return Err(TlsError::NoCertificate),
    };
    Ok(TlsSetup::Enabled(Arc::new(load(&cert, &key)?)))
}

pub fn load(cert: &Path, key: &Path) -> Result<ServerConfig, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_err(cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(cert, e))?;
    if certs.is_empty() {
        return Err(file_err(cert, "no certificate in file"));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // Safe defaults are exactly TLS 1.2 and 1.3.
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(config)
}

fn self_signed(cfg: &Config) -> Result<(PathBuf, PathBuf), TlsError> {
    let dir = cfg.data_dir.join("tls");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(&dir).map_err(|e| file_err(&dir, e))?;
    let names = vec![
        cfg.hostname.clone(),
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
    ];
    let made = rcgen::generate_simple_self_signed(names).map_err(|e| file_err(&cert, e))?;
    write_private(&key, made.signing_key.serialize_pem().as_bytes())?;
    std::fs::write(&cert, made.cert.pem()).map_err(|e| file_err(&cert, e))?;
    tracing::warn!(
        cert = %cert.display(),
        "no TLS certificate configured: made a self-signed one (set frontend.tls.cert/key for production)"
    );
    Ok((cert, key))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| file_err(path, e))?;
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
