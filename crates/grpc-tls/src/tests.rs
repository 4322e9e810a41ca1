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
            // Tests rotate files and want the change taken at once.
            reload_every: Duration::ZERO,
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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (port, plain, _stop) = serve_on(cfg, listener).await;
    std::mem::forget(_stop);
    (port, plain)
}

/// As `start_server` on `listener`; dropping the sender stops it.
async fn serve_on(
    cfg: &Config,
    listener: tokio::net::TcpListener,
) -> (u16, Option<SocketAddr>, tokio::sync::oneshot::Sender<()>) {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("authrelay.test", tonic_health::ServingStatus::Serving)
        .await;
    let plain = serve_plain_health("test", cfg.internal_tls.health_listen, health.clone())
        .await
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let tls = server_tls(cfg).unwrap();
    let server = server().add_service(health);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _keep = reporter;
        server
            .serve_with_incoming_shutdown(incoming(listener, None, tls), async {
                let _ = stopped.await;
            })
            .await
    });
    (port, plain, stop)
}

/// A client channel as the services make theirs, to the test server by name.
fn channel_to(cli: &Config, port: u16) -> Channel {
    channel(
        cli,
        &[format!("https://localhost:{port}")],
        Duration::from_secs(5),
    )
    .unwrap()
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
    let ch = channel_to(&cli, port);
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
    let ch = channel_to(&cli, port);
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
    let ch = channel_to(&cli, port);
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
        reload_every: Duration::ZERO,
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

/// cert-manager renews: the files change in place, and with no restart a
/// server takes the new set for its next handshake and a client channel
/// dials again with it. Here the whole PKI is replaced (CA A → CA B), so
/// that an old set anywhere shows as a refused handshake.
#[tokio::test]
async fn renewed_files_are_taken_by_servers_and_client_channels_without_a_restart() {
    let dir = scratch("renew");
    let (a, b) = (Pki::new("CA A"), Pki::new("CA B"));
    let srv = config(a.issue(&dir.join("srv"), &["localhost"], &a));
    let cli = config(a.issue(&dir.join("cli"), &["smtp-frontend"], &a));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (port, _, stop) = serve_on(&srv, listener).await;
    let url = [format!("https://localhost:{port}")];
    let ch = channel(&cli, &url, Duration::from_secs(5)).unwrap();
    assert_eq!(
        check(ch.clone()).await.unwrap(),
        ServingStatus::Serving as i32
    );

    // The server's files move to CA B: its next handshake uses them, so a
    // client still on CA A is refused (it would not be without a reload).
    b.issue(&dir.join("srv"), &["localhost"], &b);
    let stale = config(a.issue(&dir.join("stale"), &["smtp-frontend"], &a));
    let fresh_a = channel(&stale, &url, Duration::from_secs(5)).unwrap();
    assert!(
        check(fresh_a).await.is_err(),
        "served a CA A client after renewal"
    );

    // The client's files move to CA B too. Its channel, made on CA A, must
    // dial with B: restart the server on the same port so the old
    // connection is gone and only a new handshake can serve the call.
    b.issue(&dir.join("cli"), &["smtp-frontend"], &b);
    drop(stop);
    let listener = loop {
        match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            Ok(l) => break l,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let (_, _, _stop) = serve_on(&srv, listener).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match check(ch.clone()).await {
            Ok(status) => {
                assert_eq!(status, ServingStatus::Serving as i32);
                break;
            }
            Err(e) if std::time::Instant::now() > deadline => {
                panic!("the client channel never took the renewed files: {e:?}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// A renewal caught half-written (the new certificate beside the old key)
/// is not taken: the previous set goes on serving.
#[tokio::test]
async fn a_renewal_that_does_not_make_a_usable_set_keeps_the_previous_one() {
    let dir = scratch("halfway");
    let pki = Pki::new("authrelay internal CA");
    let srv = config(pki.issue(&dir.join("srv"), &["localhost"], &pki));
    let cli = config(pki.issue(&dir.join("cli"), &["smtp-frontend"], &pki));
    let (port, _) = start_server(&srv).await;
    // Another certificate, and the old key left in place.
    let other = dir.join("other");
    pki.issue(&other, &["localhost"], &pki);
    std::fs::copy(other.join("tls.crt"), dir.join("srv").join("tls.crt")).unwrap();
    let ch = channel_to(&cli, port);
    assert_eq!(check(ch).await.unwrap(), ServingStatus::Serving as i32);
    // And at start the same files are refused, saying why.
    let err = InternalTls::load(&srv.internal_tls)
        .err()
        .expect("mismatched key accepted");
    assert!(err.to_string().contains("internal_tls"), "{err}");
}
