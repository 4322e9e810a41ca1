//! sasl-auth's secret cache (Dovecot's auth-cache semantics): a change made
//! through credential-store reaches every replica's cache at once, a cached
//! "unknown user" never hides a user just added, and a change whose
//! announcement was missed never locks the user out.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use authrelay_e2e::*;
use authrelay_proto::credentials::v1 as cpb;
use authrelay_proto::credentials::v1::credential_store_server::CredentialStore;
use authrelay_proto::sasl::v1 as pb;
use authrelay_proto::sasl::v1::sasl_auth_client::SaslAuthClient;
use authrelay_proto::sasl::v1::sasl_auth_server::SaslAuth;
use authrelay_sasl::{ClientCredentials, ClientExchange, ClientStep, Mechanism};

const OLD: &str = "old-Password-1";
const NEW: &str = "new-Password-2";

fn facts(session: &str) -> pb::SessionFacts {
    pb::SessionFacts {
        session_id: session.into(),
        client_address: "127.0.0.1:40000".into(),
        tls: true,
        server_name: "mailserver.foo.com".into(),
        tls_version: "TLSv1.3".into(),
        listener: "submission".into(),
        ..Default::default()
    }
}

/// One CRAM-MD5 login through `start`/`step`; true on success.
async fn cram<S, F, G>(start: S, step: G, user: &str, password: &str) -> bool
where
    S: FnOnce(pb::StartRequest) -> F,
    F: std::future::Future<Output = pb::StepResponse>,
    G: FnOnce(
        pb::StepRequest,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = pb::StepResponse>>>,
{
    let session = format!("s-{}", std::process::id());
    let r = start(pb::StartRequest {
        mechanism: "CRAM-MD5".into(),
        initial_response: None,
        session: Some(facts(&session)),
        ..Default::default()
    })
    .await;
    let Some(pb::step_response::Result::Challenge(ch)) = r.result else {
        panic!("CRAM-MD5 starts with a challenge: {r:?}")
    };
    let mut client =
        ClientExchange::new(Mechanism::CramMd5, ClientCredentials::new(user, password)).unwrap();
    let ClientStep::Respond(response) = client.step(&ch.data).unwrap() else {
        panic!("no CRAM-MD5 response")
    };
    let r = step(pb::StepRequest {
        exchange_id: ch.exchange_id,
        response,
        session: Some(facts(&session)),
    })
    .await;
    matches!(r.result, Some(pb::step_response::Result::Success(_)))
}

async fn cram_grpc(addr: SocketAddr, dir: &std::path::Path, user: &str, password: &str) -> bool {
    let c = SaslAuthClient::with_interceptor(channel_to(addr).await, internal_token(dir));
    let (mut a, b) = (c.clone(), c);
    cram(
        |r| async move { a.start(r).await.expect("Start").into_inner() },
        move |r| {
            let mut b = b;
            Box::pin(async move { b.step(r).await.expect("Step").into_inner() })
        },
        user,
        password,
    )
    .await
}

/// `authrelay_auth_cache_lookups{result="RESULT"}` on a replica's /metrics.
fn cache_lookups(metrics: SocketAddr, result: &str) -> u64 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(metrics).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let series = format!("authrelay_auth_cache_lookups_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// The cache TTL is an hour: only the announcement can make the old
/// password fail, and it must on both replicas within a second.
#[test]
fn a_password_change_reaches_every_replica_cache_within_a_second() {
    let dir = scratch("cache-invalidate");
    let redis = Redis::start(&dir);
    let stack = Stack::start(
        &dir,
        &redis,
        StackOptions {
            extra_toml: "[sasl]\nsecret_cache_ttl = \"1h\"\nsecret_cache_negative_ttl = \"1h\"\n\n\
                         [sasl.limits]\nmax_failures_per_ip = 0\nmax_failures_per_user = 0\n"
                .into(),
            ..Default::default()
        },
    );
    stack.add_user("test", "mailserver.foo.com", OLD);
    let metrics = [(
        "AUTHRELAY__TELEMETRY__METRICS_LISTEN".to_owned(),
        "127.0.0.1:0".to_owned(),
    )];
    let (mut p1, r1) = stack.spawn_sasl_replica_env("sasl-auth-a", &metrics);
    let (mut p2, r2) = stack.spawn_sasl_replica_env("sasl-auth-b", &metrics);
    let (m1, m2) = (p1.addr("metrics"), p2.addr("metrics"));
    let user = "test@mailserver.foo.com";
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        for (replica, metrics) in [(r1, m1), (r2, m2)] {
            // Warm the cache, and make sure it serves: a hit is counted.
            let deadline = Instant::now() + Duration::from_secs(5);
            while cache_lookups(metrics, "hit") == 0 {
                assert!(cram_grpc(replica, &dir, user, OLD).await);
                assert!(
                    Instant::now() < deadline,
                    "{replica}: the cache never served a hit"
                );
            }
        }
        let (ok, _, err) = stack.authrelay(
            &["user", "passwd", "--realm", "mailserver.foo.com", "test"],
            &format!("{NEW}\n"),
        );
        assert!(ok, "{err}");
        let changed = Instant::now();
        for replica in [r1, r2] {
            while cram_grpc(replica, &dir, user, OLD).await {
                assert!(
                    changed.elapsed() < Duration::from_secs(1),
                    "{replica}: the old password still works a second after the change"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(
                cram_grpc(replica, &dir, user, NEW).await,
                "{replica}: new password"
            );
            assert!(
                !cram_grpc(replica, &dir, user, OLD).await,
                "{replica}: old password"
            );
        }
        // A deleted user is gone everywhere too.
        let (ok, _, err) = stack.authrelay(
            &["user", "delete", "--realm", "mailserver.foo.com", "test"],
            "",
        );
        assert!(ok, "{err}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        for replica in [r1, r2] {
            assert!(
                !cram_grpc(replica, &dir, user, NEW).await,
                "{replica}: deleted user"
            );
        }
    });
}

/// An unknown user is cached (for an hour here) like a known one; adding
/// that user must not leave them locked out behind the negative entry.
#[test]
fn a_cached_unknown_user_does_not_hide_a_user_added_later() {
    let dir = scratch("cache-negative");
    let redis = Redis::start(&dir);
    let stack = Stack::start(
        &dir,
        &redis,
        StackOptions {
            extra_toml: "[sasl]\nsecret_cache_negative_ttl = \"1h\"\n".into(),
            ..Default::default()
        },
    );
    let sasl: SocketAddr = stack
        .endpoint("AUTHRELAY__ENDPOINTS__SASL_AUTH")
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let user = "newcomer@mailserver.foo.com";
        assert!(!cram_grpc(sasl, &dir, user, OLD).await);
        assert!(!cram_grpc(sasl, &dir, user, OLD).await, "cached as unknown");
        stack.add_user("newcomer", "mailserver.foo.com", OLD);
        assert!(
            cram_grpc(sasl, &dir, user, OLD).await,
            "a new user must log in at once"
        );
    });
}

/// credential-store did not announce the change (here: it announces
/// nothing). The cache still holds the old secret; the new password fails
/// against it, and sasl-auth looks the user up again before answering 535
/// — so the user is not locked out, and the cache now holds the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_invalidation_never_locks_out_a_user_whose_password_just_changed() {
    let dir = scratch("cache-missed");
    let mut cfg = authrelay_config::Config {
        data_dir: dir.join("data"),
        hostname: "mailserver.foo.com".into(),
        default_realm: "mailserver.foo.com".into(),
        ..Default::default()
    };
    cfg.credential_store.argon2_memory_kib = 8192;
    cfg.credential_store.argon2_iterations = 1;
    cfg.sasl.secret_cache_ttl = Duration::from_secs(3600);
    // Announces nothing: every change is a missed one.
    let creds = credential_store::open(&cfg, None).await.unwrap();
    let put = |password: &str| cpb::PutUserRequest {
        name: "kurt".into(),
        realm: "mailserver.foo.com".into(),
        password: password.as_bytes().to_vec(),
        mechanisms: vec!["CRAM-MD5".into()],
        ..Default::default()
    };
    CredentialStore::put_user(&*creds, tonic::Request::new(put(OLD)))
        .await
        .unwrap();
    sasl_auth::prepare(&cfg).await.unwrap();
    let sasl = std::sync::Arc::new(
        sasl_auth::SaslService::with_credentials(
            cfg.clone(),
            authrelay_state::SharedState::in_process(),
            authrelay_grpc_tls::api::CredentialStoreApi::Local(creds.clone()),
            sasl_auth::ExchangeKeys::ephemeral(),
        )
        .unwrap(),
    );
    let login = |password: &'static str| {
        let (a, b) = (sasl.clone(), sasl.clone());
        cram(
            move |r| async move { a.start(tonic::Request::new(r)).await.unwrap().into_inner() },
            move |r| {
                Box::pin(async move { b.step(tonic::Request::new(r)).await.unwrap().into_inner() })
            },
            "kurt@mailserver.foo.com",
            password,
        )
    };
    let hits = || {
        authrelay_telemetry::metrics::render()
            .lines()
            .find_map(|l| l.strip_prefix("authrelay_auth_cache_lookups_total{result=\"hit\"} "))
            .map_or(0, |v| v.trim().parse::<u64>().unwrap())
    };
    // The change feed (in process here) comes up asynchronously.
    let deadline = Instant::now() + Duration::from_secs(5);
    while hits() == 0 {
        assert!(login(OLD).await);
        assert!(Instant::now() < deadline, "the cache never served a hit");
    }
    CredentialStore::put_user(&*creds, tonic::Request::new(put(NEW)))
        .await
        .unwrap();
    assert!(
        login(OLD).await,
        "without the announcement the cache still has the old secret (until its TTL)"
    );
    assert!(
        login(NEW).await,
        "the new password is looked up again, not refused"
    );
    assert!(!login(OLD).await, "and the cache now holds the new secret");
}
