//! Certificates for tests, made with rcgen: the frontend's self-signed
//! one, a client CA with a client certificate (EXTERNAL), and an internal
//! CA for service-to-service mutual TLS.

use std::path::{Path, PathBuf};

/// A self-signed certificate for `host`, made with rcgen, as PEM files.
pub fn test_certificate(dir: &Path, host: &str) -> (PathBuf, PathBuf) {
    let made =
        rcgen::generate_simple_self_signed(vec![host.to_owned(), "localhost".to_owned()]).unwrap();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

/// A test CA (PEM file, for `frontend.tls.client_ca`) and a client
/// certificate it signed, with subject CN `cn` and e-mail SAN `email`.
pub struct ClientCert {
    pub ca_pem: PathBuf,
    pub cert_der: Vec<u8>,
    pub key_der: Vec<u8>,
}

pub fn client_certificate(dir: &Path, cn: &str, email: &str) -> ClientCert {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "authrelay test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params
        .subject_alt_names
        .push(SanType::Rfc822Name(email.try_into().unwrap()));
    let cert = params.signed_by(&key, &issuer).unwrap();
    let ca_pem = dir.join("client-ca.pem");
    std::fs::write(&ca_pem, ca_cert.pem()).unwrap();
    ClientCert {
        ca_pem,
        cert_der: cert.der().to_vec(),
        key_der: key.serialize_der(),
    }
}

/// Service-to-service mutual TLS for tests: one CA (rcgen) and a
/// certificate per workload, laid out as cert-manager writes a Secret
/// (`tls.crt`, `tls.key`, `ca.crt`).
pub struct InternalPki {
    dir: PathBuf,
    ca_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl InternalPki {
    pub fn new(dir: &Path) -> InternalPki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "authrelay internal test CA");
        let ca = params.self_signed(&key).unwrap();
        let dir = dir.join("internal-tls");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.crt"), ca.pem()).unwrap();
        InternalPki {
            dir,
            ca_pem: ca.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA certificate (PEM file).
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A certificate for `workload` valid for `sans` (host names and IP
    /// addresses), made on first use and shared by its replicas (one
    /// Secret per workload); returns the `AUTHRELAY__INTERNAL_TLS__*`
    /// environment that switches mutual TLS on with it, as
    /// k8s/components/mtls does.
    pub fn issue(&self, workload: &str, sans: &[&str]) -> Vec<(String, String)> {
        use rcgen::{CertificateParams, DnType, KeyPair};
        let dir = self.dir.join(workload);
        if !dir.join("tls.crt").exists() {
            // Written beside and renamed into place: a running replica
            // never reads half a file.
            let tmp = self.dir.join(format!(".{workload}.tmp"));
            std::fs::create_dir_all(&tmp).unwrap();
            let key = KeyPair::generate().unwrap();
            let mut params =
                CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                    .unwrap();
            params.distinguished_name.push(DnType::CommonName, workload);
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            std::fs::write(tmp.join("tls.crt"), cert.pem()).unwrap();
            std::fs::write(tmp.join("tls.key"), key.serialize_pem()).unwrap();
            std::fs::write(tmp.join("ca.crt"), &self.ca_pem).unwrap();
            std::fs::rename(&tmp, &dir).unwrap();
        }
        let path = |f: &str| dir.join(f).display().to_string();
        vec![
            ("AUTHRELAY__INTERNAL_TLS__ENABLED".into(), "true".into()),
            ("AUTHRELAY__INTERNAL_TLS__CERT".into(), path("tls.crt")),
            ("AUTHRELAY__INTERNAL_TLS__KEY".into(), path("tls.key")),
            ("AUTHRELAY__INTERNAL_TLS__CA".into(), path("ca.crt")),
        ]
    }
}
