//! Outbound TLS for STARTTLS to a next hop. Opportunistic TLS (RFC 7435)
//! encrypts without checking who answers — a certificate check that fails
//! would only push the mail back into the clear — while `required-verify`
//! checks the chain and the host name against the Mozilla roots or a CA file.

use std::path::Path;
use std::sync::Arc;

/// The two client configurations, built once at start.
#[derive(Clone)]
pub struct OutboundTlsConfigs {
    pub any_certificate: Arc<rustls::ClientConfig>,
    pub verified: Arc<rustls::ClientConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("relay_queue.tls_ca_file {0}: {1}")]
    CaFile(String, String),
    #[error("TLS set-up: {0}")]
    Rustls(#[from] rustls::Error),
}

impl OutboundTlsConfigs {
    pub fn new(ca_file: Option<&Path>) -> Result<Self, TlsSetupError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots =
            authrelay_https::roots(ca_file).map_err(|e| TlsSetupError::CaFile(e.file, e.why))?;
        let verified = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let any_certificate = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(authrelay_tls_any::AnyCertificate::new(provider))
            .with_no_client_auth();
        Ok(OutboundTlsConfigs {
            any_certificate: Arc::new(any_certificate),
            verified: Arc::new(verified),
        })
    }
}

/// RFC 9266 `tls-exporter` channel binding for SCRAM -PLUS; TLS 1.3 only
/// (under 1.2 it lacks the extended-master-secret guarantee).
pub fn tls_exporter(conn: &rustls::ClientConnection) -> Option<Vec<u8>> {
    if conn.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
        return None;
    }
    let mut out = vec![0u8; 32];
    conn.export_keying_material(&mut out, b"EXPORTER-Channel-Binding", Some(&[]))
        .ok()?;
    Some(out)
}
