//! Outbound TLS trust and HTTPS, one way for every service: relay-queue's
//! STARTTLS to a next hop and its OAuth2 token endpoints, sasl-auth's JWKS
//! fetches. All of them trust the Mozilla roots, or instead a CA file the
//! operator names (a private issuer, a test CA), and speak rustls on the
//! ring provider the workspace uses, so no second TLS stack creeps in.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// A CA file that could not be used: which file, and why.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {why}")]
pub struct CaFileError {
    pub file: String,
    pub why: String,
}

/// The roots to verify servers against: every certificate in `ca_file`
/// (PEM), or the Mozilla roots when there is none. A file without a single
/// certificate is an error, not an empty trust store that fails later.
pub fn roots(ca_file: Option<&Path>) -> Result<rustls::RootCertStore, CaFileError> {
    let mut roots = rustls::RootCertStore::empty();
    let Some(file) = ca_file else {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        return Ok(roots);
    };
    let err = |why: String| CaFileError {
        file: file.display().to_string(),
        why,
    };
    for cert in CertificateDer::pem_file_iter(file).map_err(|e| err(e.to_string()))? {
        roots
            .add(cert.map_err(|e| err(e.to_string()))?)
            .map_err(|e| err(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(err("no certificate in the file".into()));
    }
    Ok(roots)
}

/// Why an HTTPS client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("ca_file {0}")]
    CaFile(#[from] CaFileError),
    #[error("TLS set-up: {0}")]
    Tls(#[from] rustls::Error),
    #[error("HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

/// An HTTPS client for endpoints that receive or return secrets (token
/// endpoints, JWKS): HTTPS only and no redirects — one could lead to plain
/// HTTP or to another host with the client secret — verified against
/// [`roots`]`(ca_file)`, `timeout` for connecting and for the whole request.
pub fn client(ca_file: Option<&Path>, timeout: Duration) -> Result<reqwest::Client, ClientError> {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots(ca_file)?)
    .with_no_client_auth();
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .https_only(true)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout)
        .timeout(timeout)
        .user_agent(concat!("authrelay/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_ca_file_the_mozilla_roots_are_trusted() {
        assert_eq!(
            roots(None).unwrap().len(),
            webpki_roots::TLS_SERVER_ROOTS.len()
        );
    }

    #[test]
    fn a_ca_file_without_certificates_or_missing_is_refused_naming_it() {
        let dir = std::env::temp_dir().join(format!("authrelay-https-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = roots(Some(&empty)).unwrap_err();
        assert!(
            e.file.ends_with("empty.pem") && e.why.contains("no certificate"),
            "{e}"
        );
        let e = roots(Some(&dir.join("missing.pem"))).unwrap_err();
        assert!(e.file.ends_with("missing.pem"), "{e}");
        let e = client(Some(&empty), Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().starts_with("ca_file "), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_client_builds_on_the_mozilla_roots() {
        client(None, Duration::from_secs(1)).unwrap();
    }
}
