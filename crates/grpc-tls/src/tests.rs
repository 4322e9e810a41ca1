//! Real TLS handshakes over loopback between tonic servers and clients
//! configured exactly as the services configure them; certificates made
//! with rcgen.

use std::path::Path;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::*;

struct Pki {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let ca = params.self_signed(&key).unwrap();
        Pki {
            ca_pem: ca.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// tls.crt / tls.key / ca.crt in `dir`, as cert-manager lays them out.
    fn issue(&self, dir: &Path, names: &[&str], ca_of: &Pki) -> InternalTlsConfig {
        std::fs::create_dir_all(dir).unwrap();
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        std::fs::write(dir.join("tls.crt"), cert.pem()).unwrap();
        std::fs::write(dir.join("tls.key"), key.serialize_pem()).unwrap();
        std::fs::write(dir.join("ca.crt"), &ca_of.ca_pem).unwrap();
        InternalTlsConfig {
            enabled: true,
            cert: Some(dir.join("tls.crt")),
            key: Some(dir.join("tls.key")),
            ca: Some(dir.join("ca.crt")),
            health_listen: Some("127.0.0.1:0".parse().unwrap()),
        }
    }
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("authrelay-grpc-tls-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn config(t: InternalTlsConfig) -> Config {
    Config {
        internal_tls: t,
        ..Config::default()
    }
}

/// A TLS gRPC server (health service only) as the services build theirs;
/// returns its port and the plain-text health port.
async fn start_server(cfg: &Config) -> (u16, Option<SocketAddr>) {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("authrelay.test", tonic_health::ServingStatus::Serving)
        .await;
    let plain = serve_plain_health("test", cfg.internal_tls.health_listen, health.clone())
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = server(cfg).unwrap().add_service(health);
    tokio::spawn(async move {
        let _keep = reporter;
        server
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });
    (port, plain)
}

async fn check(channel: Channel) -> Result<i32, tonic::Status> {
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "authrelay.test".into(),
        })
        .await
        .map(|r| r.into_inner().status)
}

#[tokio::test]
async fn a_client_with_a_certificate_from_our_ca_is_served() {
    let dir = scratch("ok");
    let pki = Pki::new("authrelay internal CA");
    let srv = config(pki.issue(&dir.join("srv"), &["localhost"], &pki));
    let cli = config(pki.issue(&dir.join("cli"), &["smtp-frontend"], &pki));
    let (port, _) = start_server(&srv).await;
    let ch = channel(
        &cli,
        &[format!("https://localhost:{port}")],
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(check(ch).await.unwrap(), ServingStatus::Serving as i32);
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let dir = scratch("nocert");
    let pki = Pki::new("authrelay internal CA");
    let srv = config(pki.issue(&dir.join("srv"), &["localhost"], &pki));
    let (port, _) = start_server(&srv).await;
    // Trusts the server, but has no identity to present.
    let ca = Certificate::from_pem(&pki.ca_pem);
    let tls = ClientTlsConfig::new()
        .ca_certificate(ca)
        .domain_name("localhost");
    let ch = tonic::transport::Endpoint::from_shared(format!("https://localhost:{port}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_lazy();
    // TLS 1.3: the server's verdict arrives as an alert after the client's
    // half of the handshake, and the call fails with it.
    let err = check(ch).await.unwrap_err();
    assert!(
        format!("{err:?}").contains("CertificateRequired"),
        "{err:?}"
    );
    // Nor in plain text.
    let plain = authrelay_proto::channel::lazy_channel(
        &[format!("http://127.0.0.1:{port}")],
        Duration::from_secs(5),
    )
    .unwrap();
    assert!(check(plain).await.is_err());
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused() {
    let dir = scratch("otherca");
    let pki = Pki::new("authrelay internal CA");
    let rogue = Pki::new("some other CA");
    let srv = config(pki.issue(&dir.join("srv"), &["localhost"], &pki));
    // Trusts our CA for the server, but its own certificate is the rogue's.
    let cli = config(rogue.issue(&dir.join("cli"), &["smtp-frontend"], &pki));
    let (port, _) = start_server(&srv).await;
    let ch = channel(
        &cli,
        &[format!("https://localhost:{port}")],
        Duration::from_secs(5),
    )
    .unwrap();
    let err = check(ch).await.unwrap_err();
    assert!(format!("{err:?}").contains("UnknownCA"), "{err:?}");
}

#[tokio::test]
async fn a_server_certificate_for_another_name_is_refused() {
    let dir = scratch("name");
    let pki = Pki::new("authrelay internal CA");
    // Signed by our CA, but for credential-store, not for the name dialled.
    let srv = config(pki.issue(&dir.join("srv"), &["credential-store-headless"], &pki));
    let cli = config(pki.issue(&dir.join("cli"), &["smtp-frontend"], &pki));
    let (port, _) = start_server(&srv).await;
    let ch = channel(
        &cli,
        &[format!("https://localhost:{port}")],
        Duration::from_secs(5),
    )
    .unwrap();
    assert!(check(ch).await.is_err());
}

#[tokio::test]
async fn the_plain_health_port_answers_probes_without_a_certificate() {
    let dir = scratch("health");
    let pki = Pki::new("authrelay internal CA");
    let srv = config(pki.issue(&dir.join("srv"), &["localhost"], &pki));
    let (_, plain) = start_server(&srv).await;
    let plain = plain.expect("health_listen set");
    let ch = authrelay_proto::channel::lazy_channel(
        &[format!("http://{plain}")],
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(check(ch).await.unwrap(), ServingStatus::Serving as i32);
}

#[test]
fn unreadable_pem_is_refused_naming_the_key_without_its_content() {
    let dir = scratch("pem");
    std::fs::create_dir_all(&dir).unwrap();
    let secret = "hunter2 is not a key\n";
    std::fs::write(dir.join("tls.crt"), "placeholder\n").unwrap();
    std::fs::write(dir.join("tls.key"), secret).unwrap();
    std::fs::write(dir.join("ca.crt"), "placeholder\n").unwrap();
    let t = InternalTlsConfig {
        enabled: true,
        cert: Some(dir.join("tls.crt")),
        key: Some(dir.join("tls.key")),
        ca: Some(dir.join("ca.crt")),
        health_listen: None,
    };
    let err = InternalTls::load(&t).err().unwrap().to_string();
    assert!(err.contains("internal_tls.cert"), "{err}");
    assert!(err.contains("no PEM certificate"), "{err}");
    let pki = Pki::new("ca");
    let good = pki.issue(&dir.join("good"), &["x"], &pki);
    let t = InternalTlsConfig {
        cert: good.cert.clone(),
        ca: good.ca.clone(),
        ..t
    };
    let err = InternalTls::load(&t).err().unwrap().to_string();
    assert!(err.contains("internal_tls.key"), "{err}");
    assert!(err.contains("no PEM private key"), "{err}");
    assert!(
        !err.contains("hunter2"),
        "key file content in an error: {err}"
    );
}
