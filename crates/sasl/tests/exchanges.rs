//! Our client against our server, for every mechanism: right password, wrong password,
//! unknown user, channel binding, and what the serialised state may contain.

use authrelay_sasl::{
    ChannelBinding, ChannelBindingType, ClientCredentials, ClientError, ClientExchange, ClientStep,
    Failure, Mechanism, Outcome, SecretFamily, SecretParams, SecretRequest, ServerConfig,
    ServerExchange, Step, StoredSecret, derive_secret,
};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};

const PASSWORD: &str = "Correct-Horse-Battery-Staple-42";

fn fast_params() -> SecretParams {
    SecretParams {
        argon2_m_cost_kib: 256,
        argon2_t_cost: 1,
        ..SecretParams::default()
    }
}

fn exporter(data: &[u8]) -> ChannelBinding {
    ChannelBinding {
        kind: ChannelBindingType::TlsExporter,
        data: data.to_vec(),
    }
}

/// A TLS connection offering both binding types, -PLUS advertised, a client certificate.
fn tls_config() -> ServerConfig {
    ServerConfig {
        hostname: "mx.example.org".into(),
        realms: vec!["example.org".into(), "other.example".into()],
        service: String::new(),
        channel_bindings: vec![
            exporter(b"exporter-bytes-of-this-session"),
            ChannelBinding {
                kind: ChannelBindingType::TlsServerEndPoint,
                data: b"hash-of-server-certificate".to_vec(),
            },
        ],
        plus_advertised: true,
        external_identity: Some("client.example.org".into()),
    }
}

fn creds(password: &str, mechanism: Mechanism) -> ClientCredentials {
    ClientCredentials {
        host: "mx.example.org".into(),
        channel_binding: mechanism
            .needs_channel_binding()
            .then(|| exporter(b"exporter-bytes-of-this-session")),
        ..ClientCredentials::new("alice", password)
    }
}

fn secret_for(family: SecretFamily) -> StoredSecret {
    derive_secret(
        family,
        "alice",
        "example.org",
        PASSWORD.as_bytes(),
        &fast_params(),
    )
}

/// Runs a whole exchange. The server goes through JSON at every challenge, as it does
/// through Redis between SMTP round trips; `snapshots` collects its serialised state and
/// Debug output after every call.
fn run(
    mechanism: Mechanism,
    cfg: &ServerConfig,
    client: ClientCredentials,
    secret: Option<&StoredSecret>,
    snapshots: &mut Vec<String>,
) -> Result<Outcome, Failure> {
    let mut client = ClientExchange::new(mechanism, client).expect("client accepts credentials");
    let mut server = ServerExchange::new(mechanism);
    let mut step = server.start(cfg, client.initial_response().as_deref());
    for _ in 0..10 {
        snapshots.push(serde_json::to_string(&server).unwrap());
        snapshots.push(format!("{server:?} {step:?}"));
        match step {
            Step::Challenge(challenge) => {
                let json = serde_json::to_string(&server).unwrap();
                server = serde_json::from_str(&json).unwrap();
                let ClientStep::Respond(response) = client.step(&challenge).unwrap() else {
                    panic!("client had nothing to say")
                };
                step = server.step(cfg, &response);
            }
            Step::NeedSecret(request) => {
                assert_eq!(Some(request.family), mechanism.family());
                step = server.resume(cfg, secret);
            }
            // The token check is the caller's: these tests have no issuer.
            Step::VerifyToken(_) => step = server.resume_token(Err("no issuer in this test")),
            Step::Success(outcome) => {
                assert!(server.is_finished());
                if let Some(data) = &outcome.additional_data {
                    assert_eq!(client.step(data).unwrap(), ClientStep::Respond(Vec::new()));
                }
                assert!(
                    client.is_finished() || outcome.additional_data.is_none(),
                    "client still waits for the server's proof"
                );
                return Ok(outcome);
            }
            Step::Failure(failure) => {
                assert!(server.is_finished());
                assert_eq!(
                    server.step(cfg, b"more"),
                    Step::Failure(Failure::Finished),
                    "a finished exchange stays finished"
                );
                return Err(failure);
            }
        }
    }
    panic!("exchange did not finish")
}

const PASSWORD_MECHANISMS: [Mechanism; 8] = [
    Mechanism::Plain,
    Mechanism::Login,
    Mechanism::CramMd5,
    Mechanism::DigestMd5,
    Mechanism::ScramSha1,
    Mechanism::ScramSha1Plus,
    Mechanism::ScramSha256,
    Mechanism::ScramSha256Plus,
];

#[test]
fn every_mechanism_accepts_the_right_password() {
    let cfg = tls_config();
    for mechanism in PASSWORD_MECHANISMS {
        let secret = secret_for(mechanism.family().unwrap());
        let outcome = run(
            mechanism,
            &cfg,
            creds(PASSWORD, mechanism),
            Some(&secret),
            &mut Vec::new(),
        )
        .unwrap_or_else(|f| panic!("{mechanism}: {f}"));
        assert_eq!(outcome.mechanism, mechanism);
        assert_eq!(outcome.authcid, "alice");
        assert_eq!(outcome.authzid, None);
        assert_eq!(outcome.ssf, mechanism.ssf());
        let expect_realm = (mechanism == Mechanism::DigestMd5).then(|| "example.org".to_owned());
        assert_eq!(outcome.realm, expect_realm, "{mechanism}");
        let has_server_proof = mechanism == Mechanism::DigestMd5
            || mechanism
                .family()
                .is_some_and(|f| matches!(f, SecretFamily::ScramSha1 | SecretFamily::ScramSha256));
        assert_eq!(
            outcome.additional_data.is_some(),
            has_server_proof,
            "{mechanism}"
        );
    }
}

#[test]
fn every_mechanism_refuses_a_wrong_password() {
    let cfg = tls_config();
    for mechanism in PASSWORD_MECHANISMS {
        let secret = secret_for(mechanism.family().unwrap());
        let result = run(
            mechanism,
            &cfg,
            creds("wrong", mechanism),
            Some(&secret),
            &mut Vec::new(),
        );
        assert_eq!(result, Err(Failure::InvalidCredentials), "{mechanism}");
    }
}

#[test]
fn unknown_user_fails_exactly_like_a_wrong_password() {
    let cfg = tls_config();
    for mechanism in PASSWORD_MECHANISMS {
        let secret = secret_for(mechanism.family().unwrap());
        let mut known = Vec::new();
        let wrong = run(
            mechanism,
            &cfg,
            creds("wrong", mechanism),
            Some(&secret),
            &mut known,
        );
        let mut unknown = Vec::new();
        let missing = run(
            mechanism,
            &cfg,
            creds(PASSWORD, mechanism),
            None,
            &mut unknown,
        );
        assert_eq!(wrong, missing, "{mechanism}");
        assert_eq!(
            known.len(),
            unknown.len(),
            "{mechanism}: same number of steps"
        );
    }
}

#[test]
fn secret_of_another_family_is_invalid_credentials() {
    let cfg = tls_config();
    let cram = secret_for(SecretFamily::CramMd5);
    for mechanism in PASSWORD_MECHANISMS
        .into_iter()
        .filter(|m| *m != Mechanism::CramMd5)
    {
        let result = run(
            mechanism,
            &cfg,
            creds(PASSWORD, mechanism),
            Some(&cram),
            &mut Vec::new(),
        );
        assert_eq!(result, Err(Failure::InvalidCredentials), "{mechanism}");
    }
}

fn server_first_salt(user: &str) -> String {
    let cfg = ServerConfig::default();
    let mut ex = ServerExchange::new(Mechanism::ScramSha256);
    ex.start(&cfg, Some(format!("n,,n={user},r=abcdef").as_bytes()));
    let Step::Challenge(first) = ex.resume(&cfg, None) else {
        panic!("expected server-first")
    };
    let first = String::from_utf8(first).unwrap();
    assert!(first.ends_with(",i=4096"), "{first}");
    first.split(',').nth(1).unwrap().to_owned()
}

#[test]
fn scram_unknown_user_sees_a_stable_salt_of_real_length() {
    assert_eq!(server_first_salt("ghost"), server_first_salt("ghost"));
    assert_ne!(server_first_salt("ghost"), server_first_salt("phantom"));
    // derive_secret salts are 16 bytes too, so the base64 length gives nothing away.
    assert_eq!(
        server_first_salt("ghost").len(),
        "s=".len() + B64.encode([0u8; 16]).len()
    );
}

#[test]
fn authzid_is_carried_through_every_mechanism_that_has_one() {
    let cfg = tls_config();
    for mechanism in [
        Mechanism::Plain,
        Mechanism::DigestMd5,
        Mechanism::ScramSha1,
        Mechanism::ScramSha256Plus,
    ] {
        let secret = secret_for(mechanism.family().unwrap());
        let client = ClientCredentials {
            authzid: Some("shared,box=1".into()),
            ..creds(PASSWORD, mechanism)
        };
        let outcome = run(mechanism, &cfg, client, Some(&secret), &mut Vec::new()).unwrap();
        assert_eq!(
            outcome.authzid.as_deref(),
            Some("shared,box=1"),
            "{mechanism}"
        );
    }
}

#[test]
fn digest_md5_client_may_name_a_realm() {
    let cfg = tls_config();
    let secret = derive_secret(
        SecretFamily::DigestMd5,
        "alice",
        "other.example",
        PASSWORD.as_bytes(),
        &fast_params(),
    );
    let client = ClientCredentials {
        realm: Some("other.example".into()),
        ..creds(PASSWORD, Mechanism::DigestMd5)
    };
    let outcome = run(
        Mechanism::DigestMd5,
        &cfg,
        client,
        Some(&secret),
        &mut Vec::new(),
    )
    .unwrap();
    assert_eq!(outcome.realm.as_deref(), Some("other.example"));
}

/// Drive a DIGEST-MD5 exchange by hand; the secret request it made and the result.
fn digest_with(
    username: &str,
    realm: &str,
    secret: &StoredSecret,
) -> (SecretRequest, Result<Outcome, Failure>) {
    let cfg = tls_config();
    let creds = ClientCredentials {
        host: "mx.example.org".into(),
        realm: Some(realm.into()),
        ..ClientCredentials::new(username, PASSWORD)
    };
    let mut client = ClientExchange::new(Mechanism::DigestMd5, creds).unwrap();
    let mut server = ServerExchange::new(Mechanism::DigestMd5);
    let Step::Challenge(challenge) = server.start(&cfg, None) else {
        panic!("no challenge")
    };
    let Ok(ClientStep::Respond(response)) = client.step(&challenge) else {
        panic!("client had nothing to say")
    };
    let Step::NeedSecret(request) = server.step(&cfg, &response) else {
        panic!("no secret requested")
    };
    let result = match server.resume(&cfg, Some(secret)) {
        Step::Success(outcome) => Ok(outcome),
        Step::Failure(f) => Err(f),
        other => panic!("unexpected {other:?}"),
    };
    (request, result)
}

#[test]
fn digest_md5_with_the_qualified_name_is_the_bare_user_checked_against_the_qualified_hash() {
    let secret = derive_secret(
        SecretFamily::DigestMd5,
        "alice",
        "example.org",
        PASSWORD.as_bytes(),
        &fast_params(),
    );
    // swaks and curl hash `alice@example.org` with the realm we offered.
    let (request, result) = digest_with("alice@example.org", "example.org", &secret);
    assert_eq!(request.authcid, "alice", "looked up by the bare name");
    assert_eq!(request.realm.as_deref(), Some("example.org"));
    let outcome = result.expect("qualified login");
    assert_eq!(outcome.authcid, "alice");
    assert_eq!(outcome.realm.as_deref(), Some("example.org"));
    // The bare name still works with the same stored secret.
    assert!(digest_with("alice", "example.org", &secret).1.is_ok());
    // Qualified with a realm that is not the response's, and no HA1 stored
    // for that offered realm: the user of the address's realm, refused as
    // a wrong password would be.
    let (request, result) = digest_with("alice@other.example", "example.org", &secret);
    assert_eq!(request.authcid, "alice");
    assert_eq!(request.realm.as_deref(), Some("other.example"));
    assert_eq!(result.err(), Some(Failure::InvalidCredentials));
    // An imported bare HA1 (no qualified twin) refuses the qualified form
    // as a wrong password would, and still takes the bare one.
    let StoredSecret::DigestMd5 { ha1, .. } = secret else {
        unreachable!()
    };
    let imported = StoredSecret::DigestMd5 {
        ha1,
        ha1_qualified: None,
        ha1_offered: Vec::new(),
    };
    assert_eq!(
        digest_with("alice@example.org", "example.org", &imported)
            .1
            .err(),
        Some(Failure::InvalidCredentials)
    );
    assert!(digest_with("alice", "example.org", &imported).1.is_ok());
    // The qualified hash is not the bare one under another name.
    let bare_only_twin = StoredSecret::DigestMd5 {
        ha1,
        ha1_qualified: Some(ha1),
        ha1_offered: Vec::new(),
    };
    assert_eq!(
        digest_with("alice@example.org", "example.org", &bare_only_twin)
            .1
            .err(),
        Some(Failure::InvalidCredentials)
    );
}

/// The README's own set-up: the challenge offers the host's realm first,
/// the user lives in another one, and the client (swaks, gsasl, Cyrus,
/// Thunderbird) sends its address hashed with the offered realm. Cyrus
/// accepts that; so do we, from the HA1 stored for each offered realm.
#[test]
fn digest_md5_address_hashed_with_another_offered_realm_logs_in_as_that_user() {
    let params = SecretParams {
        digest_realms: vec!["example.org".into(), "other.example".into()],
        ..fast_params()
    };
    let secret = derive_secret(
        SecretFamily::DigestMd5,
        "kurt",
        "other.example",
        PASSWORD.as_bytes(),
        &params,
    );
    let (request, result) = digest_with("kurt@other.example", "example.org", &secret);
    assert_eq!(request.authcid, "kurt");
    assert_eq!(request.realm.as_deref(), Some("other.example"));
    let outcome = result.expect("the address hashed with the offered realm");
    assert_eq!(outcome.authcid, "kurt");
    assert_eq!(outcome.realm.as_deref(), Some("other.example"));
    // A realm the server never offered is not trusted for this.
    let (request, _) = digest_with("kurt@other.example", "elsewhere.example", &secret);
    assert_eq!(request.authcid, "kurt@other.example");
    // And the wrong password still fails.
    let wrong = derive_secret(
        SecretFamily::DigestMd5,
        "kurt",
        "other.example",
        b"another password",
        &params,
    );
    assert_eq!(
        digest_with("kurt@other.example", "example.org", &wrong)
            .1
            .err(),
        Some(Failure::InvalidCredentials)
    );
}

#[test]
fn digest_md5_without_configured_realms_uses_the_empty_realm() {
    let cfg = ServerConfig::default();
    let secret = derive_secret(
        SecretFamily::DigestMd5,
        "alice",
        "",
        PASSWORD.as_bytes(),
        &fast_params(),
    );
    let outcome = run(
        Mechanism::DigestMd5,
        &cfg,
        creds(PASSWORD, Mechanism::DigestMd5),
        Some(&secret),
        &mut Vec::new(),
    )
    .unwrap();
    assert_eq!(outcome.realm.as_deref(), Some(""));
}

#[test]
fn external_authenticates_the_certificate_identity() {
    let cfg = tls_config();
    let outcome = run(
        Mechanism::External,
        &cfg,
        ClientCredentials::new("", ""),
        None,
        &mut Vec::new(),
    )
    .unwrap();
    assert_eq!(outcome.authcid, "client.example.org");
    assert_eq!(outcome.authzid, None);

    let same = ClientCredentials {
        authzid: Some("client.example.org".into()),
        ..ClientCredentials::new("", "")
    };
    let outcome = run(Mechanism::External, &cfg, same, None, &mut Vec::new()).unwrap();
    assert_eq!(outcome.authzid, None);

    let other = ClientCredentials {
        authzid: Some("postmaster".into()),
        ..ClientCredentials::new("", "")
    };
    let outcome = run(Mechanism::External, &cfg, other, None, &mut Vec::new()).unwrap();
    assert_eq!(outcome.authcid, "client.example.org");
    assert_eq!(outcome.authzid.as_deref(), Some("postmaster"));
}

#[test]
fn external_without_client_certificate_is_unavailable() {
    let cfg = ServerConfig::default();
    let result = run(
        Mechanism::External,
        &cfg,
        ClientCredentials::new("", ""),
        None,
        &mut Vec::new(),
    );
    assert_eq!(
        result,
        Err(Failure::Unavailable("no verified client certificate"))
    );
}

#[test]
fn external_without_initial_response_sends_empty_challenge() {
    let cfg = tls_config();
    let mut ex = ServerExchange::new(Mechanism::External);
    assert_eq!(ex.start(&cfg, None), Step::Challenge(Vec::new()));
    let Step::Success(outcome) = ex.step(&cfg, b"") else {
        panic!("expected success")
    };
    assert_eq!(outcome.authcid, "client.example.org");
}

#[test]
fn scram_plus_succeeds_with_matching_channel_binding_of_either_type() {
    let cfg = tls_config();
    for mechanism in [Mechanism::ScramSha1Plus, Mechanism::ScramSha256Plus] {
        for binding in cfg.channel_bindings.clone() {
            let secret = secret_for(mechanism.family().unwrap());
            let client = ClientCredentials {
                channel_binding: Some(binding.clone()),
                ..creds(PASSWORD, mechanism)
            };
            run(mechanism, &cfg, client, Some(&secret), &mut Vec::new())
                .unwrap_or_else(|f| panic!("{mechanism} {}: {f}", binding.kind));
        }
    }
}

#[test]
fn scram_plus_fails_when_channel_binding_data_differs() {
    // A man in the middle terminates TLS twice: the client's binding data is not ours.
    let cfg = tls_config();
    for mechanism in [Mechanism::ScramSha1Plus, Mechanism::ScramSha256Plus] {
        let secret = secret_for(mechanism.family().unwrap());
        let client = ClientCredentials {
            channel_binding: Some(exporter(b"exporter-bytes-of-the-attackers-session")),
            ..creds(PASSWORD, mechanism)
        };
        let result = run(mechanism, &cfg, client, Some(&secret), &mut Vec::new());
        assert_eq!(
            result,
            Err(Failure::ChannelBinding("channel binding data mismatch"))
        );
    }
}

#[test]
fn scram_plus_without_tls_is_unavailable() {
    let cfg = ServerConfig::default();
    let mut ex = ServerExchange::new(Mechanism::ScramSha256Plus);
    assert_eq!(
        ex.start(&cfg, Some(b"p=tls-exporter,,n=alice,r=abc")),
        Step::Failure(Failure::Unavailable("channel binding needs TLS"))
    );
}

#[test]
fn scram_y_flag_fails_when_plus_was_advertised() {
    // The client can bind (it has binding data) but was not offered -PLUS, so it sends "y".
    let client = ClientCredentials {
        channel_binding: Some(exporter(b"exporter-bytes-of-this-session")),
        ..creds(PASSWORD, Mechanism::ScramSha256)
    };
    let secret = secret_for(SecretFamily::ScramSha256);
    let result = run(
        Mechanism::ScramSha256,
        &tls_config(),
        client.clone(),
        Some(&secret),
        &mut Vec::new(),
    );
    assert!(
        matches!(result, Err(Failure::ChannelBinding(_))),
        "{result:?}"
    );

    // Without -PLUS advertised, "y" is honest and the exchange goes on.
    let cfg = ServerConfig {
        plus_advertised: false,
        ..tls_config()
    };
    run(
        Mechanism::ScramSha256,
        &cfg,
        client,
        Some(&secret),
        &mut Vec::new(),
    )
    .unwrap();
}

#[test]
fn scram_p_flag_on_non_plus_mechanism_fails() {
    let cfg = tls_config();
    for mechanism in [Mechanism::ScramSha1, Mechanism::ScramSha256] {
        let mut ex = ServerExchange::new(mechanism);
        assert!(
            matches!(
                ex.start(&cfg, Some(b"p=tls-exporter,,n=alice,r=abc")),
                Step::Failure(Failure::ChannelBinding(_))
            ),
            "{mechanism}"
        );
    }
}

#[test]
fn scram_plus_refuses_n_and_y_flags_and_unknown_binding_types() {
    let cfg = tls_config();
    for first in [
        &b"n,,n=alice,r=abc"[..],
        b"y,,n=alice,r=abc",
        b"p=tls-unique,,n=alice,r=abc",
    ] {
        let mut ex = ServerExchange::new(Mechanism::ScramSha256Plus);
        assert!(
            matches!(
                ex.start(&cfg, Some(first)),
                Step::Failure(Failure::ChannelBinding(_))
            ),
            "{}",
            String::from_utf8_lossy(first)
        );
    }
    // A type the client names that this connection does not offer.
    let only_endpoint = ServerConfig {
        channel_bindings: vec![ChannelBinding {
            kind: ChannelBindingType::TlsServerEndPoint,
            data: b"x".to_vec(),
        }],
        ..tls_config()
    };
    let mut ex = ServerExchange::new(Mechanism::ScramSha256Plus);
    assert!(matches!(
        ex.start(&only_endpoint, Some(b"p=tls-exporter,,n=alice,r=abc")),
        Step::Failure(Failure::ChannelBinding(_))
    ));
}

#[test]
fn scram_c_attribute_must_repeat_the_gs2_header() {
    // A client-final whose c= is "n,," (biws) after a client-first with an authzid: the
    // header was altered in transit.
    let cfg = tls_config();
    let secret = secret_for(SecretFamily::ScramSha256);
    let mut ex = ServerExchange::with_nonce(Mechanism::ScramSha256, "SERVER");
    assert!(matches!(
        ex.start(&cfg, Some(b"n,a=bob,n=alice,r=abc")),
        Step::NeedSecret(_)
    ));
    assert!(matches!(ex.resume(&cfg, Some(&secret)), Step::Challenge(_)));
    let proof = B64.encode([0u8; 32]);
    assert_eq!(
        ex.step(&cfg, format!("c=biws,r=abcSERVER,p={proof}").as_bytes()),
        Step::Failure(Failure::ChannelBinding("channel binding data mismatch"))
    );
}

/// Strings that must never appear in serialised state or Debug output for `secret`.
fn forbidden(secret: &StoredSecret, password: &str) -> Vec<String> {
    fn both(bytes: &[u8]) -> [String; 2] {
        [hex::encode(bytes), B64.encode(bytes)]
    }
    let mut out = vec![password.to_owned(), B64.encode(password)];
    match secret {
        StoredSecret::Password { phc } => {
            out.push(phc.clone());
            out.push(phc.rsplit('$').next().unwrap().to_owned());
        }
        StoredSecret::CramMd5 { inner, outer } => {
            for word in inner.iter().chain(outer) {
                out.push(word.to_string());
            }
            let bytes: Vec<u8> = inner
                .iter()
                .chain(outer)
                .flat_map(|w| w.to_le_bytes())
                .collect();
            out.extend(both(&bytes[..16]));
            out.extend(both(&bytes[16..]));
        }
        StoredSecret::DigestMd5 {
            ha1,
            ha1_qualified,
            ha1_offered,
        } => {
            out.extend(both(ha1));
            out.extend(ha1_qualified.iter().flat_map(|h| both(h)));
            out.extend(ha1_offered.iter().flat_map(|(_, h)| both(h)));
        }
        StoredSecret::ScramSha1 {
            salt,
            iterations,
            stored_key,
            server_key,
        } => {
            let mut salted = [0u8; 20];
            pbkdf2::pbkdf2_hmac::<sha1::Sha1>(password.as_bytes(), salt, *iterations, &mut salted);
            let mut mac = <Hmac<sha1::Sha1> as Mac>::new_from_slice(&salted).unwrap();
            mac.update(b"Client Key");
            out.extend(both(&mac.finalize().into_bytes()));
            out.extend(both(&salted));
            out.extend(both(stored_key));
            out.extend(both(server_key));
        }
        StoredSecret::ScramSha256 {
            salt,
            iterations,
            stored_key,
            server_key,
        } => {
            let mut salted = [0u8; 32];
            pbkdf2::pbkdf2_hmac::<sha2::Sha256>(
                password.as_bytes(),
                salt,
                *iterations,
                &mut salted,
            );
            let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&salted).unwrap();
            mac.update(b"Client Key");
            out.extend(both(&mac.finalize().into_bytes()));
            out.extend(both(&salted));
            out.extend(both(stored_key));
            out.extend(both(server_key));
        }
    }
    out
}

#[test]
fn serialised_state_never_contains_secrets() {
    let cfg = tls_config();
    for mechanism in PASSWORD_MECHANISMS {
        let secret = secret_for(mechanism.family().unwrap());
        let forbidden = forbidden(&secret, PASSWORD);
        for password in [PASSWORD, "wrong"] {
            let mut snapshots = Vec::new();
            let _ = run(
                mechanism,
                &cfg,
                creds(password, mechanism),
                Some(&secret),
                &mut snapshots,
            );
            assert!(snapshots.len() >= 2, "{mechanism}");
            for snapshot in &snapshots {
                for needle in &forbidden {
                    assert!(
                        !snapshot.contains(needle.as_str()),
                        "{mechanism}: state leaks a secret: {snapshot}"
                    );
                }
            }
        }
    }
}

#[test]
fn plaintext_password_is_not_serialised_between_need_secret_and_resume() {
    // PLAIN/LOGIN hold the password in memory only; an exchange that went through
    // serialisation at that point has lost it, and says so rather than failing as if wrong.
    let cfg = ServerConfig::default();
    let secret = secret_for(SecretFamily::Password);
    let mut ex = ServerExchange::new(Mechanism::Plain);
    let message = format!("\0alice\0{PASSWORD}");
    assert!(matches!(
        ex.start(&cfg, Some(message.as_bytes())),
        Step::NeedSecret(_)
    ));
    let json = serde_json::to_string(&ex).unwrap();
    assert!(!json.contains(PASSWORD));
    let mut restored: ServerExchange = serde_json::from_str(&json).unwrap();
    assert!(matches!(
        restored.resume(&cfg, Some(&secret)),
        Step::Failure(Failure::Unavailable(_))
    ));
    // The in-memory exchange still has it.
    assert!(matches!(ex.resume(&cfg, Some(&secret)), Step::Success(_)));
}

#[test]
fn scram_state_round_trips_at_every_step() {
    // Even the NeedSecret states survive serialisation for SCRAM: nothing secret is held.
    let cfg = tls_config();
    let secret = secret_for(SecretFamily::ScramSha256);
    let mut client = ClientExchange::new(
        Mechanism::ScramSha256,
        creds(PASSWORD, Mechanism::ScramSha256),
    )
    .unwrap();
    let mut server = ServerExchange::new(Mechanism::ScramSha256);
    let through_json = |ex: &ServerExchange| -> ServerExchange {
        serde_json::from_str(&serde_json::to_string(ex).unwrap()).unwrap()
    };
    assert_eq!(server.start(&cfg, None), Step::Challenge(Vec::new()));
    server = through_json(&server);
    let ClientStep::Respond(first) = client.step(b"").unwrap() else {
        panic!()
    };
    assert!(matches!(server.step(&cfg, &first), Step::NeedSecret(_)));
    server = through_json(&server);
    let Step::Challenge(server_first) = server.resume(&cfg, Some(&secret)) else {
        panic!()
    };
    server = through_json(&server);
    let ClientStep::Respond(last) = client.step(&server_first).unwrap() else {
        panic!()
    };
    assert!(matches!(server.step(&cfg, &last), Step::NeedSecret(_)));
    server = through_json(&server);
    let Step::Success(outcome) = server.resume(&cfg, Some(&secret)) else {
        panic!()
    };
    client
        .verify_final(&outcome.additional_data.unwrap())
        .unwrap();
    assert_eq!(
        through_json(&server).step(&cfg, b""),
        Step::Failure(Failure::Finished)
    );
}

#[test]
fn client_detects_a_server_that_does_not_know_the_secret() {
    // An impostor server that accepts anything cannot produce v= or rspauth=.
    let mut client = ClientExchange::new(
        Mechanism::ScramSha256,
        creds(PASSWORD, Mechanism::ScramSha256),
    )
    .unwrap();
    let first = String::from_utf8(client.initial_response().unwrap()).unwrap();
    let nonce = first.rsplit("r=").next().unwrap();
    client
        .step(format!("r={nonce}IMPOSTOR,s={},i=4096", B64.encode(b"salt")).as_bytes())
        .unwrap();
    let forged = format!("v={}", B64.encode([7u8; 32]));
    assert_eq!(
        client.step(forged.as_bytes()),
        Err(ClientError::ServerAuthenticationFailed)
    );
    assert_eq!(client.step(b""), Err(ClientError::Finished));
}

#[test]
fn client_reports_scram_server_error() {
    let mut client =
        ClientExchange::new(Mechanism::ScramSha1, creds(PASSWORD, Mechanism::ScramSha1)).unwrap();
    let first = String::from_utf8(client.initial_response().unwrap()).unwrap();
    let nonce = first.rsplit("r=").next().unwrap();
    client
        .step(format!("r={nonce}X,s={},i=1", B64.encode(b"salt")).as_bytes())
        .unwrap();
    assert_eq!(
        client.verify_final(b"e=invalid-proof"),
        Err(ClientError::Rejected)
    );
}

#[test]
fn login_and_cram_clients_answer_in_order() {
    let mut login =
        ClientExchange::new(Mechanism::Login, creds(PASSWORD, Mechanism::Login)).unwrap();
    assert_eq!(login.initial_response(), None);
    assert_eq!(
        login.step(b"Username:").unwrap(),
        ClientStep::Respond(b"alice".to_vec())
    );
    assert_eq!(
        login.step(b"Password:").unwrap(),
        ClientStep::Respond(PASSWORD.as_bytes().to_vec())
    );
    assert!(matches!(
        login.step(b"What?"),
        Err(ClientError::MalformedChallenge(_))
    ));

    let tim = ClientCredentials::new("tim", "tanstaaftanstaaf");
    let mut cram = ClientExchange::new(Mechanism::CramMd5, tim).unwrap();
    assert_eq!(
        cram.step(b"<1896.697170952@postoffice.reston.mci.net>")
            .unwrap(),
        ClientStep::Respond(b"tim b913a602c7eda7a495b4e6e7334d3890".to_vec())
    );
}

#[test]
fn plain_client_message_matches_rfc4616() {
    let mut plain = ClientExchange::new(
        Mechanism::Plain,
        ClientCredentials::new("tim", "tanstaaftanstaaf"),
    )
    .unwrap();
    assert_eq!(
        B64.encode(plain.initial_response().unwrap()),
        "AHRpbQB0YW5zdGFhZnRhbnN0YWFm"
    );
    assert_eq!(plain.initial_response(), None, "produced once");
    let ursel = ClientCredentials {
        authzid: Some("Ursel".into()),
        ..ClientCredentials::new("Kurt", "xipj3plmq")
    };
    let mut plain = ClientExchange::new(Mechanism::Plain, ursel).unwrap();
    assert_eq!(
        B64.encode(plain.initial_response().unwrap()),
        "VXJzZWwAS3VydAB4aXBqM3BsbXE="
    );
    assert!(matches!(
        ClientExchange::new(Mechanism::Plain, ClientCredentials::new("a\0b", "pw")),
        Err(ClientError::InvalidCredentials(_))
    ));
}

#[test]
fn cram_md5_challenges_are_fresh_and_name_the_host() {
    let cfg = tls_config();
    let challenge = |_| match ServerExchange::new(Mechanism::CramMd5).start(&cfg, None) {
        Step::Challenge(c) => String::from_utf8(c).unwrap(),
        other => panic!("{other:?}"),
    };
    let (a, b) = (challenge(0), challenge(1));
    assert_ne!(a, b);
    assert!(a.starts_with('<') && a.ends_with("@mx.example.org>"), "{a}");
    let inner = &a[1..a.len() - "@mx.example.org>".len()];
    let (random, time) = inner.split_once('.').unwrap();
    assert!(random.parse::<u64>().is_ok() && time.parse::<u64>().unwrap() > 1_600_000_000);
}

#[test]
fn digest_md5_nonces_are_fresh_and_reported() {
    let cfg = tls_config();
    let mut a = ServerExchange::new(Mechanism::DigestMd5);
    let mut b = ServerExchange::new(Mechanism::DigestMd5);
    assert_eq!(a.digest_nonce(), None);
    a.start(&cfg, None);
    b.start(&cfg, None);
    let (na, nb) = (a.digest_nonce().unwrap(), b.digest_nonce().unwrap());
    assert_ne!(na, nb);
    assert!(B64.decode(na).unwrap().len() >= 16);
    assert_eq!(
        ServerExchange::new(Mechanism::ScramSha256).digest_nonce(),
        None
    );
}

/// Only states made of what the client sent may leave the server's hands:
/// PLAIN after its empty challenge and LOGIN before user name or password;
/// never a state holding a server challenge or nonce.
#[test]
fn only_credential_waiting_plain_and_login_states_may_travel() {
    let cfg = tls_config();
    let mut plain = ServerExchange::new(Mechanism::Plain);
    assert!(matches!(plain.start(&cfg, None), Step::Challenge(_)));
    assert!(plain.awaits_client_credentials());

    let mut login = ServerExchange::new(Mechanism::Login);
    assert!(matches!(login.start(&cfg, None), Step::Challenge(_)));
    assert!(login.awaits_client_credentials(), "before the user name");
    assert!(matches!(login.step(&cfg, b"alice"), Step::Challenge(_)));
    assert!(login.awaits_client_credentials(), "before the password");
    assert!(matches!(login.step(&cfg, b"pw"), Step::NeedSecret(_)));
    assert!(
        !login.awaits_client_credentials(),
        "holding a password: never"
    );

    for mech in [
        Mechanism::CramMd5,
        Mechanism::DigestMd5,
        Mechanism::ScramSha256,
        Mechanism::ScramSha1,
    ] {
        let mut x = ServerExchange::new(mech);
        let first = if mech == Mechanism::ScramSha256 || mech == Mechanism::ScramSha1 {
            Some(&b"n,,n=alice,r=abcdefghijklmnop"[..])
        } else {
            None
        };
        let _ = x.start(&cfg, first);
        assert!(!x.awaits_client_credentials(), "{}", mech.name());
    }
}

fn bearer_client(mechanism: Mechanism, token: &str) -> ClientExchange {
    let mut creds = ClientCredentials::new("alice@example.com", token);
    creds.host = "mx.example.com".into();
    ClientExchange::new(mechanism, creds).unwrap()
}

#[test]
fn bearer_token_is_handed_to_the_caller_and_its_user_authenticates() {
    for mechanism in [Mechanism::OAuthBearer, Mechanism::XOAuth2] {
        let mut client = bearer_client(mechanism, "eyJhbGciOiJSUzI1NiJ9.e30.c2ln");
        let mut server = ServerExchange::new(mechanism);
        let Step::VerifyToken(msg) = server.start(
            &ServerConfig::default(),
            client.initial_response().as_deref(),
        ) else {
            panic!("{mechanism}: no token check asked")
        };
        assert_eq!(msg.token.expose(), "eyJhbGciOiJSUzI1NiJ9.e30.c2ln");
        assert_eq!(msg.authzid.as_deref(), Some("alice@example.com"));
        // Between the request and the verdict the state holds no token.
        let json = serde_json::to_string(&server).unwrap();
        assert!(!json.contains("c2ln"), "{json}");
        let Step::Success(outcome) = server.resume_token(Ok("alice@example.com".into())) else {
            panic!("{mechanism}: not authenticated")
        };
        assert_eq!(outcome.mechanism, mechanism);
        assert_eq!(outcome.authcid, "alice@example.com");
        assert_eq!(outcome.authzid.as_deref(), Some("alice@example.com"));
        assert!(server.is_finished());
    }
}

#[test]
fn bearer_token_refused_by_the_verifier_is_invalid_token() {
    let mut server = ServerExchange::new(Mechanism::OAuthBearer);
    let step = server.start(
        &ServerConfig::default(),
        Some(b"n,,\x01auth=Bearer abc\x01\x01"),
    );
    assert!(matches!(step, Step::VerifyToken(_)));
    assert_eq!(
        server.resume_token(Err("token expired")),
        Step::Failure(Failure::InvalidToken("token expired"))
    );
    assert_eq!(
        server.resume_token(Ok("x".into())),
        Step::Failure(Failure::Finished)
    );
}

#[test]
fn bearer_without_initial_response_gets_an_empty_challenge_then_the_message() {
    let cfg = ServerConfig::default();
    let mut server = ServerExchange::new(Mechanism::XOAuth2);
    assert_eq!(server.start(&cfg, None), Step::Challenge(Vec::new()));
    assert!(server.awaits_client_credentials());
    let json = serde_json::to_string(&server).unwrap();
    let mut server: ServerExchange = serde_json::from_str(&json).unwrap();
    let step = server.step(&cfg, b"user=bob\x01auth=Bearer t0k\x01\x01");
    let Step::VerifyToken(msg) = step else {
        panic!("{step:?}")
    };
    assert_eq!(msg.authzid.as_deref(), Some("bob"));
    // The pending check is not a state another step may drive.
    assert!(!server.awaits_client_credentials());
    assert!(matches!(
        server.step(&cfg, b"again"),
        Step::Failure(Failure::Malformed(_))
    ));
}

#[test]
fn malformed_bearer_message_is_malformed() {
    let mut server = ServerExchange::new(Mechanism::OAuthBearer);
    let step = server.start(
        &ServerConfig::default(),
        Some(b"p=tls-exporter,,\x01auth=Bearer t\x01\x01"),
    );
    assert_eq!(
        step,
        Step::Failure(Failure::Malformed("OAUTHBEARER has no channel binding"))
    );
}
