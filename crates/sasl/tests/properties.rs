//! Property tests: every server mechanism, fed arbitrary client messages at any
//! state, never panics, keeps its state through the serde round trip sasl-auth
//! makes via Redis, and never succeeds without the user's real secret; the
//! attribute parsers print and parse back.

use std::sync::OnceLock;

use authrelay_sasl::fuzzing::{
    digest_directives, digest_quote, scram_escape_saslname, scram_unescape_saslname,
};
use authrelay_sasl::{
    ChannelBinding, ChannelBindingType, Mechanism, SecretFamily, SecretParams, ServerConfig,
    ServerExchange, Step, StoredSecret, derive_secret, set_dummy_params,
};
use proptest::prelude::*;

fn cheap() -> SecretParams {
    SecretParams {
        scram_iterations: 4096,
        argon2_m_cost_kib: 64,
        argon2_t_cost: 1,
        argon2_p_cost: 1,
        digest_realms: Vec::new(),
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

#[derive(Clone, Copy, Debug)]
enum SecretGiven {
    Unknown,
    WrongFamily,
    Real,
}

/// Client messages that are near-misses of real ones, so the search gets past
/// the first parser into later states, mixed with plain garbage.
fn client_message() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..80),
        Just(b"\0user\0pencil".to_vec()),
        Just(b"user".to_vec()),
        Just(b"pencil".to_vec()),
        Just(b"user 0123456789abcdef0123456789abcdef".to_vec()),
        Just(b"n,,n=user,r=abcdef".to_vec()),
        Just(b"p=tls-exporter,,n=user,r=abcdef".to_vec()),
        Just(b"y,,n=user,r=abcdef".to_vec()),
        Just(b"c=biws,r=abcdef,p=AAAA".to_vec()),
        Just(
            b"username=\"user\",realm=\"example.org\",nonce=\"x\",nc=00000001,cnonce=\"c\",\
              digest-uri=\"smtp/mx.example.org\",response=00000000000000000000000000000000,qop=auth"
                .to_vec()
        ),
        "[a-z=,\"\\\\ ]{0,60}".prop_map(String::into_bytes),
        Just(Vec::new()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]

    #[test]
    fn server_mechanisms_never_panic_and_never_succeed_without_the_secret(
        mech in prop::sample::select(Mechanism::ALL.to_vec()),
        initial in prop::option::of(client_message()),
        messages in prop::collection::vec(client_message(), 0..5),
        tls in any::<bool>(),
        plus_advertised in any::<bool>(),
        client_cert in any::<bool>(),
        given in prop::sample::select(vec![SecretGiven::Unknown, SecretGiven::WrongFamily, SecretGiven::Real]),
        serde_between_steps in any::<bool>(),
    ) {
        let cfg = ServerConfig {
            hostname: "mx.example.org".into(),
            realms: vec!["example.org".into()],
            service: "smtp".into(),
            channel_bindings: if tls {
                vec![ChannelBinding { kind: ChannelBindingType::TlsExporter, data: b"cb".to_vec() }]
            } else {
                Vec::new()
            },
            plus_advertised,
            external_identity: client_cert.then(|| "client.example.org".into()),
        };
        let mut ex = ServerExchange::new(mech);
        let mut step = ex.start(&cfg, initial.as_deref());
        let mut messages = messages.into_iter();
        for _ in 0..12 {
            if serde_between_steps {
                let json = serde_json::to_vec(&ex).unwrap();
                ex = serde_json::from_slice(&json).unwrap();
            }
            step = match step {
                Step::Challenge(_) => match messages.next() {
                    Some(m) => ex.step(&cfg, &m),
                    None => break,
                },
                Step::NeedSecret(req) => {
                    let secret = match given {
                        SecretGiven::Unknown => None,
                        SecretGiven::WrongFamily => secrets().iter().find(|s| s.family() != req.family),
                        SecretGiven::Real => secrets().iter().find(|s| s.family() == req.family),
                    };
                    ex.resume(&cfg, secret)
                }
                // No issuer here: a bearer token never verifies.
                Step::VerifyToken(_) => ex.resume_token(Err("no issuer in this test")),
                Step::Success(_) | Step::Failure(_) => break,
            };
        }
        if let Step::Success(outcome) = &step {
            prop_assert_eq!(outcome.mechanism, mech);
            match mech {
                Mechanism::External => prop_assert!(client_cert),
                _ => prop_assert!(matches!(given, SecretGiven::Real), "{mech:?} succeeded with {given:?}"),
            }
        }
        if ex.is_finished() {
            prop_assert!(matches!(ex.step(&cfg, b"more"), Step::Failure(_)));
            prop_assert!(matches!(ex.resume(&cfg, None), Step::Failure(_)));
        }
    }

    #[test]
    fn digest_directives_print_and_parse_back(
        directives in prop::collection::vec(("[a-z][a-z0-9-]{0,11}", "\\PC{0,24}"), 0..10),
    ) {
        let printed: Vec<String> = directives
            .iter()
            .map(|(n, v)| format!("{n}={}", digest_quote(v)))
            .collect();
        prop_assert_eq!(digest_directives(&printed.join(",")), Ok(directives));
    }

    #[test]
    fn digest_directive_parser_never_panics(input in "\\PC{0,200}") {
        let _ = digest_directives(&input);
    }

    #[test]
    fn scram_saslname_escape_round_trips(name in "[^\\x00]{0,40}") {
        let escaped = scram_escape_saslname(&name);
        prop_assert!(!escaped.contains(','));
        prop_assert_eq!(scram_unescape_saslname(&escaped), Ok(name));
    }
}
