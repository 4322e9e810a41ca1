//! Hostile and broken input: each rule gives its Failure, and no input panics.

use authrelay_sasl::{
    ChannelBinding, ChannelBindingType, ClientCredentials, ClientExchange, Failure, Mechanism,
    SecretFamily, SecretParams, ServerConfig, ServerExchange, Step, StoredSecret, derive_secret,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn cfg() -> ServerConfig {
    ServerConfig {
        hostname: "mx.example.org".into(),
        realms: vec!["example.org".into()],
        service: "smtp".into(),
        channel_bindings: vec![ChannelBinding {
            kind: ChannelBindingType::TlsExporter,
            data: b"cb".to_vec(),
        }],
        plus_advertised: true,
        external_identity: Some("client.example.org".into()),
    }
}

fn is_malformed(step: &Step) -> bool {
    matches!(step, Step::Failure(Failure::Malformed(_)))
}

fn plain(message: &[u8]) -> Step {
    ServerExchange::new(Mechanism::Plain).start(&cfg(), Some(message))
}

#[test]
fn plain_rejects_missing_nul() {
    assert!(is_malformed(&plain(b"tim tanstaaftanstaaf")));
    assert!(is_malformed(&plain(b"tim\0tanstaaftanstaaf")));
}

#[test]
fn plain_rejects_extra_nul() {
    assert!(is_malformed(&plain(b"\0tim\0tans\0taaf")));
    assert!(is_malformed(&plain(b"\0\0\0\0")));
}

#[test]
fn plain_rejects_empty_authcid_or_password() {
    assert!(is_malformed(&plain(b"\0\0password")));
    assert!(is_malformed(&plain(b"\0tim\0")));
    assert!(is_malformed(&plain(b"")));
}

#[test]
fn plain_rejects_bad_utf8() {
    assert!(is_malformed(&plain(b"\0t\xffm\0password")));
    assert!(is_malformed(&plain(b"\xc3\0tim\0password")));
    assert!(is_malformed(&plain(b"\0tim\0pass\xfe")));
}

#[test]
fn plain_rejects_oversized_fields() {
    let long = "a".repeat(2000);
    assert!(is_malformed(&plain(format!("\0{long}\0pw").as_bytes())));
    assert!(is_malformed(&plain(format!("\0tim\0{long}").as_bytes())));
    assert!(is_malformed(&plain(&vec![b'a'; 1 << 20])));
}

#[test]
fn login_rejects_empty_or_bad_username() {
    let mut ex = ServerExchange::new(Mechanism::Login);
    ex.start(&cfg(), None);
    assert!(is_malformed(&ex.step(&cfg(), b"")));
    let mut ex = ServerExchange::new(Mechanism::Login);
    ex.start(&cfg(), None);
    assert!(is_malformed(&ex.step(&cfg(), b"\xff\xfe")));
}

#[test]
fn cram_md5_rejects_malformed_responses() {
    for response in [
        &b"timb913a602c7eda7a495b4e6e7334d3890"[..],
        b" b913a602c7eda7a495b4e6e7334d3890",
        b"tim b913a602c7eda7a495b4e6e7334d389",
        b"tim b913a602c7eda7a495b4e6e7334d3890ff",
        b"tim g913a602c7eda7a495b4e6e7334d3890",
        b"t\xffm b913a602c7eda7a495b4e6e7334d3890",
        b"",
    ] {
        let mut ex = ServerExchange::new(Mechanism::CramMd5);
        ex.start(&cfg(), None);
        assert!(
            is_malformed(&ex.step(&cfg(), response)),
            "{}",
            String::from_utf8_lossy(response)
        );
    }
}

#[test]
fn cram_md5_rejects_initial_response() {
    let step = ServerExchange::new(Mechanism::CramMd5).start(&cfg(), Some(b"tim 00"));
    assert!(is_malformed(&step));
}

const NONCE: &str = "OA6MG9tEQGm2hh";

fn digest_response(overrides: &[(&str, Option<&str>)]) -> String {
    let mut fields = vec![
        ("charset", "utf-8".to_owned()),
        ("username", "\"chris\"".to_owned()),
        ("realm", "\"example.org\"".to_owned()),
        ("nonce", format!("\"{NONCE}\"")),
        ("nc", "00000001".to_owned()),
        ("cnonce", "\"OA6MHXh6VqTrRk\"".to_owned()),
        ("digest-uri", "\"smtp/mx.example.org\"".to_owned()),
        ("response", "d388dad90d4bbd760a152321f2143af7".to_owned()),
        ("qop", "auth".to_owned()),
    ];
    for (name, value) in overrides {
        match (fields.iter().position(|(n, _)| n == name), value) {
            (Some(i), None) => {
                fields.remove(i);
            }
            (Some(i), Some(v)) => fields[i].1 = (*v).to_owned(),
            (None, Some(v)) => fields.push((name, (*v).to_owned())),
            (None, None) => {}
        }
    }
    fields
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn digest_step(response: &[u8]) -> Step {
    let mut ex = ServerExchange::with_nonce(Mechanism::DigestMd5, NONCE);
    assert!(matches!(ex.start(&cfg(), None), Step::Challenge(_)));
    ex.step(&cfg(), response)
}

#[test]
fn digest_md5_well_formed_response_asks_for_the_secret() {
    assert!(matches!(
        digest_step(digest_response(&[]).as_bytes()),
        Step::NeedSecret(_)
    ));
}

#[test]
fn digest_md5_rejects_missing_directives() {
    for name in [
        "username",
        "nonce",
        "cnonce",
        "nc",
        "digest-uri",
        "response",
    ] {
        let step = digest_step(digest_response(&[(name, None)]).as_bytes());
        assert!(is_malformed(&step), "without {name}: {step:?}");
    }
}

#[test]
fn digest_md5_optional_directives_may_be_absent() {
    for name in ["realm", "qop", "charset"] {
        let step = digest_step(digest_response(&[(name, None)]).as_bytes());
        assert!(
            matches!(step, Step::NeedSecret(_)),
            "without {name}: {step:?}"
        );
    }
}

#[test]
fn digest_md5_rejects_nonce_count_other_than_one() {
    let step = digest_step(digest_response(&[("nc", Some("00000002"))]).as_bytes());
    assert_eq!(
        step,
        Step::Failure(Failure::Malformed("nc must be 00000001"))
    );
}

#[test]
fn digest_md5_rejects_a_nonce_it_did_not_issue() {
    let step = digest_step(digest_response(&[("nonce", Some("\"OA6MG9tEQGm2hX\""))]).as_bytes());
    assert_eq!(step, Step::Failure(Failure::InvalidCredentials));
}

#[test]
fn digest_md5_rejects_digest_uri_for_another_service() {
    let step =
        digest_step(digest_response(&[("digest-uri", Some("\"imap/mx.example.org\""))]).as_bytes());
    assert_eq!(step, Step::Failure(Failure::InvalidCredentials));
    // The service is compared case-insensitively, and any host is fine.
    let step =
        digest_step(digest_response(&[("digest-uri", Some("\"SMTP/10.0.0.1\""))]).as_bytes());
    assert!(matches!(step, Step::NeedSecret(_)));
    let step = digest_step(digest_response(&[("digest-uri", Some("\"smtp\""))]).as_bytes());
    assert!(is_malformed(&step));
}

#[test]
fn digest_md5_rejects_duplicated_directives() {
    let response = format!("{},username=\"eve\"", digest_response(&[]));
    assert_eq!(
        digest_step(response.as_bytes()),
        Step::Failure(Failure::Malformed("duplicated directive"))
    );
}

#[test]
fn digest_md5_rejects_unsupported_qop_and_charset() {
    assert!(is_malformed(&digest_step(
        digest_response(&[("qop", Some("auth-conf"))]).as_bytes()
    )));
    assert!(is_malformed(&digest_step(
        digest_response(&[("charset", Some("iso-8859-1"))]).as_bytes()
    )));
}

#[test]
fn digest_md5_rejects_bad_response_hex() {
    for bad in ["d388", "z388dad90d4bbd760a152321f2143af7", "\"\""] {
        assert!(is_malformed(&digest_step(
            digest_response(&[("response", Some(bad))]).as_bytes()
        )));
    }
}

#[test]
fn digest_md5_rejects_broken_syntax_and_bad_utf8() {
    assert!(is_malformed(&digest_step(b"username=\"chris")));
    assert!(is_malformed(&digest_step(b"username chris")));
    assert!(is_malformed(&digest_step(b"username=\"ch\xffris\"")));
}

#[test]
fn digest_md5_response_over_4096_bytes_is_refused() {
    let padding = format!("x-pad=\"{}\"", "a".repeat(4100));
    let step = digest_step(digest_response(&[("x-pad", Some(&padding[6..]))]).as_bytes());
    assert_eq!(
        step,
        Step::Failure(Failure::Malformed("digest-response too long"))
    );
}

#[test]
fn digest_md5_unknown_directives_are_ignored() {
    let step = digest_step(
        digest_response(&[("maxbuf", Some("65536")), ("x-foo", Some("\"a,b\""))]).as_bytes(),
    );
    assert!(matches!(step, Step::NeedSecret(_)));
}

fn scram_first(message: &[u8]) -> Step {
    ServerExchange::new(Mechanism::ScramSha256).start(&cfg(), Some(message))
}

#[test]
fn scram_username_escapes_are_decoded() {
    let Step::NeedSecret(req) = scram_first(b"n,a=b=2Cc=3D,n=us=2Cer=3D,r=abc") else {
        panic!("expected NeedSecret")
    };
    assert_eq!(req.authcid, "us,er=");
}

#[test]
fn scram_rejects_bad_escapes() {
    for first in [
        &b"n,,n=us=er,r=abc"[..],
        b"n,,n=user=,r=abc",
        b"n,,n=user=2c,r=abc",
        b"n,a=b=41,n=user,r=abc",
    ] {
        assert!(
            is_malformed(&scram_first(first)),
            "{}",
            String::from_utf8_lossy(first)
        );
    }
}

#[test]
fn scram_rejects_mandatory_extension() {
    assert!(is_malformed(&scram_first(b"n,,m=ext,n=user,r=abc")));
}

#[test]
fn scram_rejects_wrong_gs2_header() {
    for first in [
        &b"x,,n=user,r=abc"[..],
        b"n,b=bob,n=user,r=abc",
        b"p=,,n=user,r=abc",
        b"p=tls exporter,,n=user,r=abc",
        b"n=user,r=abc",
        b"n",
        b"F,n,,n=user,r=abc",
    ] {
        let step = scram_first(first);
        assert!(
            matches!(
                step,
                Step::Failure(Failure::Malformed(_) | Failure::ChannelBinding(_))
            ),
            "{}: {step:?}",
            String::from_utf8_lossy(first)
        );
    }
}

#[test]
fn scram_rejects_missing_fields_and_bad_nonce() {
    for first in [
        &b"n,,r=abc"[..],
        b"n,,n=user",
        b"n,,n=,r=abc",
        b"n,,n=user,r=",
        b"n,,n=user,r=a\x7fc",
        b"n,,n=user,r=abc,!",
        b"n,,n=\xff,r=abc",
    ] {
        assert!(
            is_malformed(&scram_first(first)),
            "{}",
            String::from_utf8_lossy(first)
        );
    }
}

fn scram_final(message: &[u8]) -> Step {
    let secret = derive_secret(
        SecretFamily::ScramSha256,
        "",
        "",
        b"pw",
        &SecretParams::default(),
    );
    let mut ex = ServerExchange::with_nonce(Mechanism::ScramSha256, "SRV");
    assert!(matches!(
        ex.start(&cfg(), Some(b"n,,n=user,r=abc")),
        Step::NeedSecret(_)
    ));
    assert!(matches!(
        ex.resume(&cfg(), Some(&secret)),
        Step::Challenge(_)
    ));
    ex.step(&cfg(), message)
}

#[test]
fn scram_rejects_malformed_client_final() {
    let proof = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    for message in [
        "c=biws,r=abcSRV".to_owned(),
        format!("r=abcSRV,c=biws,p={proof}"),
        format!("c=biws,p={proof}"),
        "c=biws,r=abcSRV,p=AAAA".to_owned(),
        "c=biws,r=abcSRV,p=!!!!".to_owned(),
        format!("c=b!ws,r=abcSRV,p={proof}"),
        format!("c=biws,r=abcSRV,p={proof},x=1"),
    ] {
        assert!(is_malformed(&scram_final(message.as_bytes())), "{message}");
    }
}

#[test]
fn scram_rejects_client_final_with_foreign_nonce() {
    let message = "c=biws,r=abcXYZ,p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    assert_eq!(
        scram_final(message.as_bytes()),
        Step::Failure(Failure::InvalidCredentials)
    );
}

#[test]
fn scram_rejects_wrong_channel_binding_header() {
    // "eSws" is base64 of "y,,": the client-first said "n".
    let message = "c=eSws,r=abcSRV,p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    assert_eq!(
        scram_final(message.as_bytes()),
        Step::Failure(Failure::ChannelBinding("channel binding data mismatch"))
    );
}

#[test]
fn scram_wrong_proof_is_invalid_credentials() {
    let secret = derive_secret(
        SecretFamily::ScramSha256,
        "",
        "",
        b"pw",
        &SecretParams::default(),
    );
    let mut ex = ServerExchange::with_nonce(Mechanism::ScramSha256, "SRV");
    ex.start(&cfg(), Some(b"n,,n=user,r=abc"));
    ex.resume(&cfg(), Some(&secret));
    ex.step(
        &cfg(),
        b"c=biws,r=abcSRV,p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    );
    assert_eq!(
        ex.resume(&cfg(), Some(&secret)),
        Step::Failure(Failure::InvalidCredentials)
    );
}

#[test]
fn external_rejects_bad_utf8_authzid() {
    let step = ServerExchange::new(Mechanism::External).start(&cfg(), Some(b"\xff"));
    assert!(is_malformed(&step));
}

#[test]
fn step_after_finish_is_finished() {
    for mechanism in Mechanism::ALL {
        let mut ex = ServerExchange::new(mechanism);
        // Oversized input fails every mechanism at once.
        let first = ex.start(&cfg(), Some(&vec![b'x'; 100_000]));
        assert!(matches!(first, Step::Failure(_)), "{mechanism}: {first:?}");
        assert!(ex.is_finished());
        assert_eq!(ex.step(&cfg(), b"x"), Step::Failure(Failure::Finished));
        assert_eq!(ex.resume(&cfg(), None), Step::Failure(Failure::Finished));
        assert_eq!(ex.start(&cfg(), None), Step::Failure(Failure::Finished));
    }
}

#[test]
fn resume_without_a_request_fails_the_exchange() {
    let mut ex = ServerExchange::new(Mechanism::CramMd5);
    ex.start(&cfg(), None);
    assert!(is_malformed(&ex.resume(&cfg(), None)));
    assert!(ex.is_finished());
}

#[test]
fn failure_messages_carry_no_payload() {
    // Every Failure is built from static text, so a user name can only appear through a bug
    // that formats it in; check a few paths with a recognisable name.
    let name = "VerySecretUserName";
    let mut steps = vec![
        plain(format!("\0{name}\0").as_bytes()),
        scram_first(format!("n,,n={name}=,r=abc").as_bytes()),
        digest_step(format!("username=\"{name}\"").as_bytes()),
    ];
    let mut ex = ServerExchange::new(Mechanism::Plain);
    ex.start(&cfg(), Some(format!("\0{name}\0pw").as_bytes()));
    steps.push(ex.resume(&cfg(), None));
    for step in steps {
        let Step::Failure(f) = step else {
            panic!("expected failure: {step:?}")
        };
        assert!(!f.to_string().contains(name));
        assert!(!format!("{f:?}").contains(name));
    }
}

/// Inputs for the no-panic test: random bytes, random structural text, and valid messages
/// with random mutations.
fn random_inputs(rng: &mut StdRng, seeds: &[&[u8]]) -> Vec<Vec<u8>> {
    const ALPHABET: &[u8] = b"nyprcsivma=,\"\\\0 \t\r\n/:-_2C3DAZaz09+/\xff\xc3";
    let mut out = Vec::new();
    for _ in 0..40 {
        let len = rng.gen_range(0..64);
        out.push((0..len).map(|_| rng.r#gen::<u8>()).collect());
        let len = rng.gen_range(0..96);
        out.push(
            (0..len)
                .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())])
                .collect(),
        );
        let mut mutated = seeds[rng.gen_range(0..seeds.len())].to_vec();
        for _ in 0..rng.gen_range(1..4) {
            if mutated.is_empty() {
                break;
            }
            let i = rng.gen_range(0..mutated.len());
            match rng.gen_range(0..3) {
                0 => mutated[i] = ALPHABET[rng.gen_range(0..ALPHABET.len())],
                1 => {
                    mutated.remove(i);
                }
                _ => mutated.insert(i, ALPHABET[rng.gen_range(0..ALPHABET.len())]),
            }
        }
        out.push(mutated);
    }
    out.push(vec![b','; 9000]);
    out.push(vec![0u8; 5000]);
    out
}

/// Drives `mechanism` with valid messages for `depth` steps and returns the exchange.
fn advanced(mechanism: Mechanism, depth: usize, secret: &StoredSecret) -> Option<ServerExchange> {
    let cfg = cfg();
    let mut client = ClientExchange::new(
        mechanism,
        ClientCredentials {
            channel_binding: cfg.channel_bindings.first().cloned(),
            ..ClientCredentials::new("user", "pw")
        },
    )
    .ok()?;
    let mut server = ServerExchange::new(mechanism);
    let mut step = server.start(&cfg, client.initial_response().as_deref());
    for _ in 0..depth {
        step = match step {
            Step::Challenge(c) => match client.step(&c) {
                Ok(authrelay_sasl::ClientStep::Respond(r)) => server.step(&cfg, &r),
                _ => return None,
            },
            Step::NeedSecret(_) => server.resume(&cfg, Some(secret)),
            _ => return None,
        };
    }
    Some(server)
}

#[test]
fn no_input_panics_any_mechanism_at_any_state() {
    let mut rng = StdRng::seed_from_u64(0x5A51_2025);
    let seeds: &[&[u8]] = &[
        b"\0tim\0tanstaaftanstaaf",
        b"tim b913a602c7eda7a495b4e6e7334d3890",
        b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL",
        b"p=tls-exporter,a=x,n=user,r=abc",
        b"c=biws,r=abcSRV,p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        digest_response(&[]).leak().as_bytes(),
    ];
    let params = SecretParams {
        argon2_m_cost_kib: 64,
        argon2_t_cost: 1,
        scram_iterations: 16,
        ..SecretParams::default()
    };
    let secrets: Vec<StoredSecret> = SecretFamily::ALL
        .into_iter()
        .map(|f| derive_secret(f, "user", "example.org", b"pw", &params))
        .collect();
    let configs = [cfg(), ServerConfig::default()];
    let mut runs = 0;
    for mechanism in Mechanism::ALL {
        let secret = mechanism
            .family()
            .map(|f| secrets[SecretFamily::ALL.iter().position(|x| *x == f).unwrap()].clone())
            .unwrap_or_else(|| secrets[0].clone());
        for depth in 0..5 {
            for input in random_inputs(&mut rng, seeds) {
                for cfg in &configs {
                    if let Some(mut ex) = advanced(mechanism, depth, &secret) {
                        let step = if depth == 0 && rng.gen_bool(0.5) {
                            ServerExchange::new(mechanism).start(cfg, Some(&input))
                        } else {
                            ex.step(cfg, &input)
                        };
                        if let Step::NeedSecret(_) = step {
                            // Any family, or none, must be handled without panicking.
                            let pick = rng.gen_range(0..=secrets.len());
                            ex.resume(cfg, secrets.get(pick));
                        }
                        runs += 1;
                    }
                    // The client side gets the same abuse.
                    if let Ok(mut client) = ClientExchange::new(
                        mechanism,
                        ClientCredentials {
                            channel_binding: cfg.channel_bindings.first().cloned(),
                            ..ClientCredentials::new("user", "pw")
                        },
                    ) {
                        client.initial_response();
                        let _ = client.step(&input);
                        let _ = client.step(&input);
                        let _ = client.verify_final(&input);
                    }
                }
            }
        }
    }
    assert!(runs > 1000, "only {runs} runs");
}
