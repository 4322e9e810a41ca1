//! Server-side CPU cost of one complete exchange per mechanism.
//!
//! `cargo bench -p authrelay-sasl --bench mechanisms`
//!
//! What is timed is what sasl-auth spends per login on its own CPU: every server step, the
//! `resume` with the user's stored secret (Argon2id with the default parameters for PLAIN
//! and LOGIN, PBKDF2 is *not* in the server path of SCRAM: the stored keys are), and the
//! JSON round trip of the exchange between client round trips, as sasl-auth keeps it in
//! Redis. The client's messages are computed once, outside the timing, against fixed nonces
//! (`with_nonce`); network, Redis and the credential-store are not included.

use std::hint::black_box;

use authrelay_sasl::{
    ClientCredentials, ClientExchange, ClientStep, Mechanism, SecretFamily, SecretParams,
    ServerConfig, ServerExchange, Step, StoredSecret, derive_secret,
};
use criterion::{Criterion, criterion_group, criterion_main};

const PASSWORD: &str = "Correct-Horse-Battery-Staple-42";
const SERVER_NONCE: &str = "3rfcNHYJY1ZVvWVs7j";
const CLIENT_NONCE: &str = "fyko+d2lbbFgONRv9qkxdawL";

fn config() -> ServerConfig {
    ServerConfig {
        hostname: "mailserver.foo.com".into(),
        realms: vec!["mailserver.foo.com".into()],
        ..ServerConfig::default()
    }
}

/// The client's messages for one successful exchange: (initial response, later responses).
fn script(mech: Mechanism, secret: &StoredSecret) -> (Option<Vec<u8>>, Vec<Vec<u8>>) {
    let cfg = config();
    let creds = ClientCredentials {
        host: "mailserver.foo.com".into(),
        ..ClientCredentials::new("test", PASSWORD)
    };
    let mut client = ClientExchange::with_nonce(mech, creds, CLIENT_NONCE).expect("client");
    let mut server = ServerExchange::with_nonce(mech, SERVER_NONCE);
    let initial = client.initial_response();
    let mut responses = Vec::new();
    let mut step = server.start(&cfg, initial.as_deref());
    loop {
        step = match step {
            Step::NeedSecret(_) => server.resume(&cfg, Some(secret)),
            Step::Challenge(ch) => match client.step(&ch).expect("client step") {
                ClientStep::Respond(r) => {
                    responses.push(r.clone());
                    server.step(&cfg, &r)
                }
                ClientStep::Done => panic!("{mech}: client done before the server"),
            },
            Step::Success(_) => return (initial, responses),
            Step::Failure(f) => panic!("{mech}: exchange failed while scripting: {f}"),
            Step::VerifyToken(_) => panic!("{mech}: bearer tokens are not benchmarked here"),
        }
    }
}

/// One server-side exchange, replaying `script`; true on success.
fn serve_once(
    mech: Mechanism,
    cfg: &ServerConfig,
    secret: &StoredSecret,
    initial: Option<&[u8]>,
    responses: &[Vec<u8>],
) -> bool {
    let mut server = ServerExchange::with_nonce(mech, SERVER_NONCE);
    let mut step = server.start(cfg, initial);
    let mut next = responses.iter();
    loop {
        step = match step {
            Step::NeedSecret(_) => server.resume(cfg, Some(secret)),
            Step::Challenge(_) => {
                // Between round trips sasl-auth stores the exchange and a replica loads it.
                let stored = serde_json::to_vec(&server).expect("serialise");
                server = serde_json::from_slice(&stored).expect("deserialise");
                match next.next() {
                    Some(r) => server.step(cfg, r),
                    None => return false,
                }
            }
            Step::Success(_) => return true,
            Step::Failure(_) | Step::VerifyToken(_) => return false,
        }
    }
}

fn mechanisms(c: &mut Criterion) {
    let params = SecretParams::default();
    let cfg = config();
    let mut group = c.benchmark_group("server exchange");
    for mech in [
        Mechanism::Plain,
        Mechanism::Login,
        Mechanism::CramMd5,
        Mechanism::DigestMd5,
        Mechanism::ScramSha1,
        Mechanism::ScramSha256,
    ] {
        let family = mech.family().expect("password mechanism");
        let secret = derive_secret(
            family,
            "test",
            "mailserver.foo.com",
            PASSWORD.as_bytes(),
            &params,
        );
        let (initial, responses) = script(mech, &secret);
        assert!(serve_once(
            mech,
            &cfg,
            &secret,
            initial.as_deref(),
            &responses
        ));
        if family == SecretFamily::Password {
            // Argon2id with 19 MiB takes tens of milliseconds: fewer samples keep the run short.
            group.sample_size(20);
        } else {
            group.sample_size(100);
        }
        group.bench_function(mech.name(), |b| {
            b.iter(|| {
                black_box(serve_once(
                    mech,
                    &cfg,
                    &secret,
                    black_box(initial.as_deref()),
                    black_box(&responses),
                ))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, mechanisms);
criterion_main!(benches);
