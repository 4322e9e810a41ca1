//! Every server mechanism fed arbitrary client steps, at every state.
//!
//! Input: byte 0 picks the mechanism, byte 1 the connection and secret
//! (flags below), the rest is split on 0xFF into the initial response and the
//! client's answers. On `NeedSecret` the exchange gets no secret (an unknown
//! user: the dummy), a secret of the wrong family, or the real secret of
//! user `user`, password `pencil`. Checked: no panic; the state survives the
//! serde round trip sasl-auth makes through Redis between steps; and never a
//! success without that real secret (a wrong credential never gets 235).
#![no_main]

use std::sync::OnceLock;

use authrelay_sasl::{
    ChannelBinding, ChannelBindingType, Mechanism, SecretFamily, SecretParams, ServerConfig,
    ServerExchange, Step, StoredSecret, derive_secret, set_dummy_params,
};
use libfuzzer_sys::fuzz_target;

const WITH_INITIAL: u8 = 1;
const TLS: u8 = 2;
const PLUS_ADVERTISED: u8 = 4;
const CLIENT_CERT: u8 = 8;
const REAL_SECRET: u8 = 16;
const WRONG_FAMILY: u8 = 32;
const SERDE_BETWEEN_STEPS: u8 = 64;

fn cheap() -> SecretParams {
    // Fast costs: the fuzzer should spend its time in parsers, not Argon2.
    SecretParams {
        scram_iterations: 4096,
        argon2_m_cost_kib: 64,
        argon2_t_cost: 1,
        argon2_p_cost: 1,
        // The address hashed in another offered realm, too.
        digest_realms: vec!["other.example".into()],
    }
}

fn secrets() -> &'static Vec<StoredSecret> {
    static S: OnceLock<Vec<StoredSecret>> = OnceLock::new();
    S.get_or_init(|| {
        set_dummy_params(cheap());
        [
            SecretFamily::Password,
            SecretFamily::CramMd5,
            SecretFamily::DigestMd5,
            SecretFamily::ScramSha1,
            SecretFamily::ScramSha256,
        ]
        .into_iter()
        .map(|f| derive_secret(f, "user", "example.org", b"pencil", &cheap()))
        .collect()
    })
}

fn round_trip(ex: &ServerExchange) -> ServerExchange {
    let json = serde_json::to_vec(ex).expect("an exchange always serialises");
    serde_json::from_slice(&json).expect("and reads back")
}

fuzz_target!(|data: &[u8]| {
    let [m, flags, rest @ ..] = data else {
        return;
    };
    let mechanism = Mechanism::ALL[usize::from(*m) % Mechanism::ALL.len()];
    let tls = flags & TLS != 0;
    let cfg = ServerConfig {
        hostname: "mx.example.org".into(),
        realms: vec!["example.org".into()],
        service: "smtp".into(),
        channel_bindings: if tls {
            vec![ChannelBinding {
                kind: ChannelBindingType::TlsExporter,
                data: b"exporter-bytes".to_vec(),
            }]
        } else {
            Vec::new()
        },
        plus_advertised: flags & PLUS_ADVERTISED != 0,
        external_identity: (flags & CLIENT_CERT != 0).then(|| "client.example.org".into()),
    };
    let secrets = secrets();
    let mut parts = rest.split(|&b| b == 0xff);
    let mut ex = ServerExchange::new(mechanism);
    let initial = if flags & WITH_INITIAL != 0 {
        parts.next()
    } else {
        None
    };
    let mut step = ex.start(&cfg, initial);
    let mut real_secret_used = false;
    for _ in 0..16 {
        if flags & SERDE_BETWEEN_STEPS != 0 {
            ex = round_trip(&ex);
        }
        step = match step {
            Step::Challenge(_) => match parts.next() {
                Some(answer) => ex.step(&cfg, answer),
                None => break,
            },
            Step::NeedSecret(req) => {
                let secret = if flags & REAL_SECRET != 0 {
                    real_secret_used = true;
                    secrets.iter().find(|s| s.family() == req.family)
                } else if flags & WRONG_FAMILY != 0 {
                    secrets.iter().find(|s| s.family() != req.family)
                } else {
                    None
                };
                ex.resume(&cfg, secret)
            }
            Step::Success(ref outcome) => {
                assert!(
                    real_secret_used || mechanism == Mechanism::External,
                    "{mechanism:?} succeeded without the user's secret"
                );
                if mechanism == Mechanism::External {
                    assert!(
                        cfg.external_identity.is_some(),
                        "EXTERNAL without a certificate"
                    );
                }
                assert_eq!(outcome.mechanism, mechanism);
                break;
            }
            // No issuer in the fuzzer: a bearer token never verifies.
            Step::VerifyToken(_) => ex.resume_token(Err("no issuer in the fuzzer")),
            Step::Failure(_) => break,
        };
    }
    assert!(
        !matches!(step, Step::Success(_)) || real_secret_used || mechanism == Mechanism::External,
        "{mechanism:?} succeeded without the user's secret"
    );
    // A finished exchange stays finished, whatever comes next.
    if ex.is_finished() {
        assert!(matches!(ex.step(&cfg, b"again"), Step::Failure(_)));
        assert!(matches!(ex.resume(&cfg, None), Step::Failure(_)));
    }
});
