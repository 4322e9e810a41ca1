//! Outbound TLS for STARTTLS to a next hop. Opportunistic TLS (RFC 7435)
//! encrypts without checking who answers — a certificate check that fails
//! would only push the mail back into the clear — while `required-verify`
//! checks the chain and the host name against the Mozilla roots or a CA file.

use std::path::Path;
use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

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
        let mut roots = rustls::RootCertStore::empty();
        match ca_file {
            Some(file) => {
                let err = |e: String| TlsSetupError::CaFile(file.display().to_string(), e);
                for cert in CertificateDer::pem_file_iter(file).map_err(|e| err(e.to_string()))? {
                    roots
                        .add(cert.map_err(|e| err(e.to_string()))?)
                        .map_err(|e| err(e.to_string()))?;
                }
                if roots.is_empty() {
                    return Err(err("no certificate in the file".into()));
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let verified = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let any_certificate = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth();
        Ok(OutboundTlsConfigs {
            any_certificate: Arc::new(any_certificate),
            verified: Arc::new(verified),
        })
    }
}

/// Accepts any certificate but still checks the handshake signatures, so the
/// session key is bound to the certificate's key: an attacker must actively
/// sit in the path, not merely replay or tamper with the handshake.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
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
