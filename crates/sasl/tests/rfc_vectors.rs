//! The RFC examples (shared/TEST-VECTORS.md), run through the public server API.

use authrelay_sasl::{
    Failure, Mechanism, Outcome, SecretFamily, SecretParams, SecretRequest, ServerConfig,
    ServerExchange, Step, StoredSecret, derive_scram_secret, derive_secret,
};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

fn fast_params() -> SecretParams {
    SecretParams {
        argon2_m_cost_kib: 256,
        argon2_t_cost: 1,
        ..SecretParams::default()
    }
}

fn challenge(step: Step) -> String {
    match step {
        Step::Challenge(c) => String::from_utf8(c).unwrap(),
        other => panic!("expected a challenge, got {other:?}"),
    }
}

fn need_secret(step: Step) -> SecretRequest {
    match step {
        Step::NeedSecret(r) => r,
        other => panic!("expected NeedSecret, got {other:?}"),
    }
}

fn success(step: Step) -> Outcome {
    match step {
        Step::Success(o) => o,
        other => panic!("expected success, got {other:?}"),
    }
}

#[test]
fn cram_md5_rfc2195_vector() {
    let cfg = ServerConfig::default();
    let mut ex = ServerExchange::with_nonce(
        Mechanism::CramMd5,
        "<1896.697170952@postoffice.reston.mci.net>",
    );
    assert_eq!(
        challenge(ex.start(&cfg, None)),
        "<1896.697170952@postoffice.reston.mci.net>"
    );
    let response = B64
        .decode("dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw")
        .unwrap();
    assert_eq!(response, b"tim b913a602c7eda7a495b4e6e7334d3890");
    let req = need_secret(ex.step(&cfg, &response));
    assert_eq!(
        req,
        SecretRequest {
            authcid: "tim".into(),
            realm: None,
            family: SecretFamily::CramMd5
        }
    );
    let secret = derive_secret(
        SecretFamily::CramMd5,
        "tim",
        "",
        b"tanstaaftanstaaf",
        &fast_params(),
    );
    let outcome = success(ex.resume(&cfg, Some(&secret)));
    assert_eq!(outcome.authcid, "tim");
    assert_eq!(outcome.mechanism, Mechanism::CramMd5);
    assert_eq!(outcome.additional_data, None);
    assert!(ex.is_finished());
}

#[test]
fn cram_md5_rfc2195_vector_with_uppercase_hex() {
    let cfg = ServerConfig::default();
    let mut ex = ServerExchange::with_nonce(
        Mechanism::CramMd5,
        "<1896.697170952@postoffice.reston.mci.net>",
    );
    ex.start(&cfg, None);
    need_secret(ex.step(&cfg, b"tim B913A602C7EDA7A495B4E6E7334D3890"));
    let secret = derive_secret(
        SecretFamily::CramMd5,
        "tim",
        "",
        b"tanstaaftanstaaf",
        &fast_params(),
    );
    success(ex.resume(&cfg, Some(&secret)));
}

fn elwood(service: &str) -> ServerConfig {
    ServerConfig {
        hostname: "elwood.innosoft.com".into(),
        realms: vec!["elwood.innosoft.com".into()],
        service: service.into(),
        ..ServerConfig::default()
    }
}

fn digest_vector(service: &str, nonce: &str, client: &str, rspauth: &str) {
    let cfg = elwood(service);
    let mut ex = ServerExchange::with_nonce(Mechanism::DigestMd5, nonce);
    assert_eq!(
        challenge(ex.start(&cfg, None)),
        format!(
            "realm=\"elwood.innosoft.com\",nonce=\"{nonce}\",qop=\"auth\",charset=utf-8,algorithm=md5-sess"
        )
    );
    assert_eq!(ex.digest_nonce(), Some(nonce));
    let req = need_secret(ex.step(&cfg, client.as_bytes()));
    assert_eq!(
        req,
        SecretRequest {
            authcid: "chris".into(),
            realm: Some("elwood.innosoft.com".into()),
            family: SecretFamily::DigestMd5
        }
    );
    let secret = derive_secret(
        SecretFamily::DigestMd5,
        "chris",
        "elwood.innosoft.com",
        b"secret",
        &fast_params(),
    );
    let outcome = success(ex.resume(&cfg, Some(&secret)));
    assert_eq!(
        outcome,
        Outcome {
            mechanism: Mechanism::DigestMd5,
            authcid: "chris".into(),
            realm: Some("elwood.innosoft.com".into()),
            authzid: None,
            ssf: 128,
            additional_data: Some(format!("rspauth={rspauth}").into_bytes()),
        }
    );
    assert_eq!(ex.digest_nonce(), Some(nonce));
}

#[test]
fn digest_md5_rfc2831_imap_vector() {
    digest_vector(
        "imap",
        "OA6MG9tEQGm2hh",
        "charset=utf-8,username=\"chris\",realm=\"elwood.innosoft.com\",nonce=\"OA6MG9tEQGm2hh\",nc=00000001,cnonce=\"OA6MHXh6VqTrRk\",digest-uri=\"imap/elwood.innosoft.com\",response=d388dad90d4bbd760a152321f2143af7,qop=auth",
        "ea40f60335c427b5527b84dbabcdfffd",
    );
}

#[test]
fn digest_md5_rfc2831_acap_vector() {
    digest_vector(
        "acap",
        "OA9BSXrbuRhWay",
        "charset=utf-8,username=\"chris\",realm=\"elwood.innosoft.com\",nonce=\"OA9BSXrbuRhWay\",nc=00000001,cnonce=\"OA9BSuZWMSpW8m\",digest-uri=\"acap/elwood.innosoft.com\",response=6084c6db3fede7352c551284490fd0fc,qop=auth",
        "2f0b3d7c3c2e486600ef710726aa2eae",
    );
}

#[test]
fn digest_md5_rfc2831_vector_with_reordered_directives_and_whitespace() {
    digest_vector(
        "imap",
        "OA6MG9tEQGm2hh",
        " qop=auth , response=D388DAD90D4BBD760A152321F2143AF7,digest-uri=\"imap/elwood.innosoft.com\",\r\n cnonce=\"OA6MHXh6VqTrRk\",nc=00000001,nonce=\"OA6MG9tEQGm2hh\",Realm=\"elwood.innosoft.com\",username=\"chris\",charset=utf-8,x-unknown=\"a,b\"",
        "ea40f60335c427b5527b84dbabcdfffd",
    );
}

fn b64<const N: usize>(s: &str) -> [u8; N] {
    B64.decode(s).unwrap().try_into().unwrap()
}

fn scram_vector(mechanism: Mechanism, secret: StoredSecret, server_nonce: &str, lines: [&str; 4]) {
    let cfg = ServerConfig::default();
    let [client_first, server_first, client_final, server_final] = lines;
    let mut ex = ServerExchange::with_nonce(mechanism, server_nonce);
    let req = need_secret(ex.start(&cfg, Some(client_first.as_bytes())));
    assert_eq!(req.authcid, "user");
    assert_eq!(req.realm, None);
    assert_eq!(Some(req.family), mechanism.family());
    assert_eq!(challenge(ex.resume(&cfg, Some(&secret))), server_first);
    // Client-final asks for the secret again: the keys are not kept between steps.
    assert_eq!(need_secret(ex.step(&cfg, client_final.as_bytes())), req);
    let outcome = success(ex.resume(&cfg, Some(&secret)));
    assert_eq!(outcome.authcid, "user");
    assert_eq!(outcome.authzid, None);
    assert_eq!(
        outcome.additional_data,
        Some(server_final.as_bytes().to_vec())
    );
}

#[test]
fn scram_sha1_rfc5802_vector() {
    let secret = StoredSecret::ScramSha1 {
        salt: B64.decode("QSXCR+Q6sek8bf92").unwrap(),
        iterations: 4096,
        stored_key: b64("6dlGYMOdZcOPutkcNY8U2g7vK9Y="),
        server_key: b64("D+CSWLOshSulAsxiupA+qs2/fTE="),
    };
    let derived = derive_scram_secret(
        SecretFamily::ScramSha1,
        b"pencil",
        &B64.decode("QSXCR+Q6sek8bf92").unwrap(),
        4096,
    );
    assert_eq!(derived.as_ref(), Some(&secret));
    scram_vector(
        Mechanism::ScramSha1,
        secret,
        "3rfcNHYJY1ZVvWVs7j",
        [
            "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL",
            "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
            "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
            "v=rmF9pqV8S7suAoZWja4dJRkFsKQ=",
        ],
    );
}

#[test]
fn scram_sha256_rfc7677_vector() {
    let secret = StoredSecret::ScramSha256 {
        salt: B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap(),
        iterations: 4096,
        stored_key: b64("WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY="),
        server_key: b64("wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="),
    };
    scram_vector(
        Mechanism::ScramSha256,
        secret,
        "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
        [
            "n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
        ],
    );
}

#[test]
fn scram_sha256_rfc7677_vector_without_initial_response() {
    let secret = derive_scram_secret(
        SecretFamily::ScramSha256,
        b"pencil",
        &B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap(),
        4096,
    )
    .unwrap();
    let cfg = ServerConfig::default();
    let mut ex =
        ServerExchange::with_nonce(Mechanism::ScramSha256, "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0");
    assert_eq!(challenge(ex.start(&cfg, None)), "");
    need_secret(ex.step(&cfg, b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"));
    challenge(ex.resume(&cfg, Some(&secret)));
    need_secret(ex.step(&cfg, b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="));
    success(ex.resume(&cfg, Some(&secret)));
}

fn plain_password(password: &str) -> StoredSecret {
    derive_secret(
        SecretFamily::Password,
        "",
        "",
        password.as_bytes(),
        &fast_params(),
    )
}

#[test]
fn plain_rfc4616_vector() {
    let cfg = ServerConfig::default();
    let message = B64.decode("AHRpbQB0YW5zdGFhZnRhbnN0YWFm").unwrap();
    assert_eq!(message, b"\0tim\0tanstaaftanstaaf");
    let mut ex = ServerExchange::new(Mechanism::Plain);
    let req = need_secret(ex.start(&cfg, Some(&message)));
    assert_eq!(
        req,
        SecretRequest {
            authcid: "tim".into(),
            realm: None,
            family: SecretFamily::Password
        }
    );
    let outcome = success(ex.resume(&cfg, Some(&plain_password("tanstaaftanstaaf"))));
    assert_eq!(
        outcome,
        Outcome {
            mechanism: Mechanism::Plain,
            authcid: "tim".into(),
            realm: None,
            authzid: None,
            ssf: 0,
            additional_data: None,
        }
    );
}

#[test]
fn plain_rfc4616_authzid_vector_reports_authzid_for_policy() {
    // RFC 4616 §4 refuses this one because Kurt may not act as Ursel: that is proxy policy,
    // the caller's job. The mechanism's part is to report both identities.
    let cfg = ServerConfig::default();
    let message = B64.decode("VXJzZWwAS3VydAB4aXBqM3BsbXE=").unwrap();
    assert_eq!(message, b"Ursel\0Kurt\0xipj3plmq");
    let mut ex = ServerExchange::new(Mechanism::Plain);
    assert_eq!(need_secret(ex.start(&cfg, Some(&message))).authcid, "Kurt");
    let outcome = success(ex.resume(&cfg, Some(&plain_password("xipj3plmq"))));
    assert_eq!(outcome.authcid, "Kurt");
    assert_eq!(outcome.authzid.as_deref(), Some("Ursel"));
}

#[test]
fn plain_without_initial_response_sends_empty_challenge() {
    let cfg = ServerConfig::default();
    let mut ex = ServerExchange::new(Mechanism::Plain);
    assert_eq!(challenge(ex.start(&cfg, None)), "");
    need_secret(ex.step(&cfg, b"\0tim\0tanstaaftanstaaf"));
    success(ex.resume(&cfg, Some(&plain_password("tanstaaftanstaaf"))));
}

#[test]
fn login_prompts_username_then_password() {
    let cfg = ServerConfig::default();
    let mut ex = ServerExchange::new(Mechanism::Login);
    let prompt = challenge(ex.start(&cfg, None));
    assert_eq!(B64.encode(&prompt), "VXNlcm5hbWU6");
    let prompt = challenge(ex.step(&cfg, b"tim"));
    assert_eq!(B64.encode(&prompt), "UGFzc3dvcmQ6");
    assert_eq!(
        need_secret(ex.step(&cfg, b"tanstaaftanstaaf")).authcid,
        "tim"
    );
    let outcome = success(ex.resume(&cfg, Some(&plain_password("tanstaaftanstaaf"))));
    assert_eq!(
        (outcome.mechanism, outcome.authcid.as_str()),
        (Mechanism::Login, "tim")
    );
}

#[test]
fn login_initial_response_is_the_username() {
    let cfg = ServerConfig::default();
    let mut ex = ServerExchange::new(Mechanism::Login);
    assert_eq!(challenge(ex.start(&cfg, Some(b"tim"))), "Password:");
    assert_eq!(need_secret(ex.step(&cfg, b"pw")).authcid, "tim");
    assert_eq!(
        ex.resume(&cfg, Some(&plain_password("other"))),
        Step::Failure(Failure::InvalidCredentials)
    );
}
