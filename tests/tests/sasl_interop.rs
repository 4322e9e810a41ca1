//! Every SASL mechanism against clients we did not write — Python's smtplib,
//! swaks (Perl Authen::SASL), curl (libcurl), scramp and GNU SASL — over TCP
//! against the real stack; and exchanges whose steps land on different
//! sasl-auth replicas.
//!
//! Passwords reach the clients through the environment, stdin or a 0600
//! file, never argv.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use authrelay_e2e::*;
use authrelay_proto::sasl::v1 as pb;
use authrelay_proto::sasl::v1::sasl_auth_client::SaslAuthClient;
use authrelay_sasl::{ClientCredentials, ClientExchange, ClientStep, Mechanism};
use base64::Engine as _;
use serde_json::json;

const PASSWORD: &str = "tanstaaf-Secret-42";
const WRONG: &str = "not-the-password";
const USER: &str = "test@mailserver.foo.com";

/// A stack with `test@mailserver.foo.com`, a second realm with
/// `kurt@other.example`, and no brute-force limits: these tests fail on
/// purpose many times and are about the mechanisms, not the limits.
fn stack(name: &str) -> (std::path::PathBuf, Redis, Stack) {
    stack_with(name, "")
}

/// As [`stack`], with more keys of `[sasl]`.
fn stack_with(name: &str, sasl: &str) -> (std::path::PathBuf, Redis, Stack) {
    let dir = scratch(name);
    let redis = Redis::start(&dir);
    let stack = Stack::start(
        &dir,
        &redis,
        StackOptions {
            extra_toml: format!(
                "[sasl]\nrealms = \"mailserver.foo.com other.example\"\n{sasl}\n\n\
                 [sasl.limits]\nmax_failures_per_ip = 0\nmax_failures_per_user = 0\n"
            ),
            ..Default::default()
        },
    );
    stack.add_user("test", "mailserver.foo.com", PASSWORD);
    stack.add_user("kurt", "other.example", PASSWORD);
    (dir, redis, stack)
}

fn assert_no_password_logged(stack: &Stack) {
    let logs = stack.logs();
    assert!(!logs.contains(PASSWORD), "a password reached a log");
    assert!(!logs.contains(WRONG), "a password reached a log");
}

// ---------------------------------------------------------------- smtplib

#[test]
fn smtplib_plain_login_and_cram_md5_log_in_with_the_password_and_get_535_without() {
    let (_dir, _redis, stack) = stack("interop-smtplib");
    for mech in ["PLAIN", "LOGIN", "CRAM-MD5"] {
        for (password, want) in [(PASSWORD, 235), (WRONG, 535)] {
            let res = smtplib(
                json!({"port": stack.submission.port(), "starttls": true, "mech": mech, "user": USER}),
                password,
            );
            assert_eq!(res["auth"][0], want, "{mech}: {res}");
        }
    }
    assert_no_password_logged(&stack);
}

// ------------------------------------------------------------------ swaks

/// swaks (Authen::SASL underneath) with the password in SWAKS_OPT_auth_password,
/// its documented environment form. Returns (exit ok, transcript).
fn swaks(
    server: SocketAddr,
    mech: &str,
    user: &str,
    password: &str,
    extra: &[&str],
) -> (bool, String) {
    let swaks = require_tool("swaks", "apt-get install swaks");
    let out = Command::new(swaks)
        .args(["--server", &server.to_string(), "--tls"])
        .args(["--auth", mech, "--auth-user", user, "--quit-after", "AUTH"])
        .args(["--ehlo", "client.example"])
        .args(extra)
        .env("SWAKS_OPT_auth_password", password)
        .stdin(Stdio::null())
        .output()
        .expect("run swaks");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains("Authen::SASL") || !text.contains("not installed"),
        "swaks needs Perl's Authen::SASL and Digest::HMAC for CRAM-MD5/DIGEST-MD5: \
         apt-get install libauthen-sasl-perl libdigest-hmac-perl (scripts/test.sh does)\n{text}"
    );
    (out.status.success(), text)
}

/// The decoded 334 challenges swaks received, in order.
fn swaks_challenges(transcript: &str) -> Vec<String> {
    transcript
        .lines()
        .filter_map(|l| {
            l.trim_start_matches(['<', '~', '*', ' '])
                .strip_prefix("334 ")
        })
        .map(|b| {
            String::from_utf8_lossy(
                &base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .unwrap_or_default(),
            )
            .into_owned()
        })
        .collect()
}

#[test]
fn swaks_plain_login_cram_md5_and_digest_md5_log_in_and_a_wrong_password_is_535() {
    let (_dir, _redis, stack) = stack("interop-swaks");
    // DIGEST-MD5 carries the realm in its own directive (RFC 2831 §2.1.2):
    // the user name may be the bare NAME, as with Cyrus' sasldb, or the
    // address people type (hashed with the realm the server offered).
    for (mech, user) in [
        ("PLAIN", USER),
        ("LOGIN", USER),
        ("CRAM-MD5", USER),
        ("DIGEST-MD5", "test"),
        ("DIGEST-MD5", USER),
    ] {
        let (ok, text) = swaks(stack.submission, mech, user, PASSWORD, &[]);
        assert!(ok && text.contains("235 2.7.0"), "{mech}: {text}");
        let (ok, text) = swaks(stack.submission, mech, user, WRONG, &[]);
        assert!(!ok && text.contains("535 5.7.8"), "{mech} wrong: {text}");
    }
    assert_no_password_logged(&stack);
}

/// RFC 2831 as swaks' Authen::SASL sees it: realm list, nonce, qop=auth,
/// charset=utf-8, md5-sess, the realm the client picks, digest-uri service
/// `smtp` (another service's response is refused) and a final rspauth.
#[test]
fn swaks_digest_md5_gets_realms_nonce_qop_charset_and_rspauth_and_the_service_must_be_smtp() {
    let (_dir, _redis, stack) = stack("interop-digest");
    let (ok, text) = swaks(stack.submission, "DIGEST-MD5", "test", PASSWORD, &[]);
    assert!(ok, "{text}");
    let challenges = swaks_challenges(&text);
    assert_eq!(challenges.len(), 2, "challenge and rspauth: {text}");
    let first = &challenges[0];
    for part in [
        "realm=\"mailserver.foo.com\"",
        "realm=\"other.example\"",
        "qop=\"auth\"",
        "charset=utf-8",
        "algorithm=md5-sess",
    ] {
        assert!(first.contains(part), "{part} missing in {first}");
    }
    let nonce = first
        .split("nonce=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or("");
    assert!(nonce.len() >= 16, "nonce too short: {first}");
    assert!(
        challenges[1].starts_with("rspauth=") && challenges[1].len() == 8 + 32,
        "{}",
        challenges[1]
    );
    // Each exchange has its own nonce.
    let (_, again) = swaks(stack.submission, "DIGEST-MD5", "test", PASSWORD, &[]);
    assert_ne!(swaks_challenges(&again)[0], *first, "nonce reused");

    // A user of the second realm picks it from the list.
    let (ok, text) = swaks(
        stack.submission,
        "DIGEST-MD5",
        "kurt",
        PASSWORD,
        &["--auth-extra", "realm=other.example"],
    );
    assert!(ok && text.contains("235 2.7.0"), "{text}");
    // The same user in the wrong realm is someone else.
    let (ok, text) = swaks(stack.submission, "DIGEST-MD5", "kurt", PASSWORD, &[]);
    assert!(!ok && text.contains("535 5.7.8"), "{text}");
    // With his address as the user name: his realm, picked, hashed with it.
    let (ok, text) = swaks(
        stack.submission,
        "DIGEST-MD5",
        "kurt@other.example",
        PASSWORD,
        &["--auth-extra", "realm=other.example"],
    );
    assert!(ok && text.contains("235 2.7.0"), "{text}");
    // His address hashed with the first realm offered (what most clients
    // do): still kurt of other.example, as with Cyrus.
    let (ok, text) = swaks(
        stack.submission,
        "DIGEST-MD5",
        "kurt@other.example",
        PASSWORD,
        &[],
    );
    assert!(ok && text.contains("235 2.7.0"), "{text}");
    // ... and with a wrong password, refused.
    let (ok, text) = swaks(
        stack.submission,
        "DIGEST-MD5",
        "kurt@other.example",
        WRONG,
        &[],
    );
    assert!(!ok && text.contains("535 5.7.8"), "{text}");
    // A response made for IMAP is not valid for SMTP.
    let (ok, text) = swaks(
        stack.submission,
        "DIGEST-MD5",
        "test",
        PASSWORD,
        &["--auth-extra", "dmd5-serv-type=imap"],
    );
    assert!(!ok && text.contains("535 5.7.8"), "{text}");
    let logs = stack.frontend.log_text();
    assert!(
        logs.contains("authid=test@mailserver.foo.com, mech=DIGEST-MD5, bits=128"),
        "{logs}"
    );
    assert_eq!(
        logs.matches("authid=kurt@other.example, mech=DIGEST-MD5")
            .count(),
        3,
        "kurt, then kurt@other.example twice, all as kurt of other.example: {logs}"
    );
    assert_no_password_logged(&stack);
}

// ------------------------------------------------------------------- curl

/// curl smtp:// with STARTTLS required; the credentials in a 0600 `-K`
/// config file. Returns (exit code, verbose transcript).
fn curl(server: SocketAddr, dir: &Path, mech: &str, password: &str) -> (i32, String) {
    let curl = require_tool("curl", "apt-get install curl");
    let cfg = dir.join(format!("curl-{mech}.cfg"));
    std::fs::write(&cfg, format!("user = \"{USER}:{password}\"\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();
    let msg = dir.join("curl-msg.txt");
    std::fs::write(&msg, "Subject: curl\r\n\r\nhello from curl\r\n").unwrap();
    let out = Command::new(curl)
        .arg("-sSv")
        .arg(format!("smtp://{server}"))
        .args(["--ssl-reqd", "-k", "--login-options"])
        .arg(format!("AUTH={mech}"))
        .arg("-K")
        .arg(&cfg)
        .args(["--mail-from", USER, "--mail-rcpt", "friend@outside.example"])
        .arg("-T")
        .arg(&msg)
        .args(["--max-time", "60"])
        .stdin(Stdio::null())
        .output()
        .expect("run curl");
    let _ = std::fs::remove_file(&cfg);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn curl_plain_login_cram_md5_and_digest_md5_log_in_and_a_wrong_password_is_535() {
    let (dir, _redis, stack) = stack("interop-curl");
    // curl logs in as the address (`test@mailserver.foo.com`); for DIGEST-MD5
    // it hashes that with the first realm we offer.
    for mech in ["PLAIN", "LOGIN", "CRAM-MD5", "DIGEST-MD5"] {
        let (code, text) = curl(stack.submission, &dir, mech, PASSWORD);
        assert_eq!(code, 0, "{mech}: {text}");
        assert!(text.contains(&format!("> AUTH {mech}")), "{mech}: {text}");
        assert!(text.contains("< 235 2.7.0"), "{mech}: {text}");
        assert!(text.contains("Message accepted"), "{mech}: {text}");
        let (code, text) = curl(stack.submission, &dir, mech, WRONG);
        // curl's CURLE_LOGIN_DENIED
        assert_eq!(code, 67, "{mech} wrong: {text}");
        assert!(text.contains("< 535 5.7.8"), "{mech} wrong: {text}");
    }
    assert_no_password_logged(&stack);
}

// ----------------------------------------------------------------- scramp

fn scramp(server: SocketAddr, plan: serde_json::Value, password: &str) -> serde_json::Value {
    let mut plan = plan;
    plan["port"] = json!(server.port());
    let out = Command::new("python3")
        .arg(support("scram_client.py"))
        .arg(plan.to_string())
        .env("SMTP_PASSWORD", password)
        .output()
        .expect("python3 must be installed (scripts/test.sh installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let res: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
        panic!(
            "scram_client.py gave no JSON:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(res.get("error").is_none(), "{res}");
    res
}

#[test]
fn scramp_scram_sha_256_and_sha_1_log_in_verify_the_server_and_a_wrong_password_is_535() {
    let (_dir, _redis, stack) = stack("interop-scramp");
    for mech in ["SCRAM-SHA-256", "SCRAM-SHA-1"] {
        for initial in [true, false] {
            let res = scramp(
                stack.submission,
                json!({"mech": mech, "user": USER, "initial_response": initial}),
                PASSWORD,
            );
            assert_eq!(res["auth"][0], 235, "{mech}: {res}");
            // scramp checked our v= ServerSignature: we proved we know the key.
            assert_eq!(res["server_verified"], true, "{mech}: {res}");
        }
        let res = scramp(stack.submission, json!({"mech": mech, "user": USER}), WRONG);
        assert_eq!(res["auth"][0], 535, "{mech} wrong: {res}");
        let res = scramp(
            stack.submission,
            json!({"mech": mech, "user": "nobody@mailserver.foo.com"}),
            PASSWORD,
        );
        assert_eq!(res["auth"][0], 535, "{mech} unknown user: {res}");
    }
    let logs = stack.frontend.log_text();
    assert!(logs.contains("mech=SCRAM-SHA-256, bits=0"), "{logs}");
    assert!(logs.contains("mech=SCRAM-SHA-1, bits=0"), "{logs}");
    assert_no_password_logged(&stack);
}

/// RFC 5802 §2.2: SCRAM hashes the SASLprep'd password. scramp does that; so
/// must our stored keys, or a user whose password has a no-break space or a
/// compatibility character could never log in with a real SCRAM client.
#[test]
fn scramp_logs_in_with_a_non_ascii_password_that_saslprep_rewrites() {
    let (_dir, _redis, stack) = stack("interop-saslprep");
    let password = "pass\u{A0}w\u{F6}rd-\u{2168}";
    stack.add_user("uni", "mailserver.foo.com", password);
    let res = scramp(
        stack.submission,
        json!({"mech": "SCRAM-SHA-256", "user": "uni@mailserver.foo.com"}),
        password,
    );
    assert_eq!(res["auth"][0], 235, "{res}");
    // PLAIN compares the UTF-8 bytes as sent (smtplib's auth_plain is
    // ASCII-only, so this one is spoken by hand over TLS).
    let mut c = Raw::connect(stack.submission);
    assert_eq!(c.cmd("EHLO client.example").0, 250);
    assert_eq!(c.cmd("STARTTLS").0, 220);
    let mut t = c.into_tls();
    assert_eq!(t.cmd("EHLO client.example").0, 250);
    let ir = b64(format!("\0uni@mailserver.foo.com\0{password}").as_bytes());
    let (code, text) = t.cmd(&format!("AUTH PLAIN {ir}"));
    assert_eq!(code, 235, "{text}");
}

// ------------------------------------------------------------------ gsasl

/// GNU SASL's command-line client: STARTTLS with GnuTLS, then
/// SCRAM-SHA-256-PLUS bound to the TLS 1.3 session with RFC 9266
/// tls-exporter. The password is answered to its prompt on stdin (setsid
/// takes the controlling terminal away so getpass reads stdin).
fn gsasl(server: SocketAddr, mech: &str, password: &str) -> (bool, String) {
    let gsasl = require_tool("gsasl", "apt-get install gsasl");
    let setsid = require_tool("setsid", "apt-get install util-linux");
    let mut child = Command::new(setsid)
        .arg(gsasl)
        .args(["--smtp", "--starttls", "--x509-ca-file=", "--verbose"])
        // DIGEST-MD5's digest-uri is smtp/HOST: gsasl needs both named,
        // and asks for the protection level unless told.
        .args([
            "--service=smtp",
            "--hostname=localhost",
            "--quality-of-protection=qop-auth",
        ])
        .args(["-m", mech, "-a", USER])
        .arg(server.ip().to_string())
        .arg(server.port().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run gsasl");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        // DIGEST-MD5 asks for the realm first: Enter, as a user would, to
        // take the server's.
        .write_all(
            if mech == "DIGEST-MD5" {
                format!("\n{password}\n")
            } else {
                format!("{password}\n")
            }
            .as_bytes(),
        )
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The README's own set-up: the host's name is the default realm (first in
/// the DIGEST-MD5 challenge), the user lives in `mailserver.foo.com`, and
/// logs in with the address. swaks, curl and gsasl hash the address with
/// the challenge's realm; Cyrus accepts that, and so must we — on
/// defaults, with nothing configured for DIGEST-MD5.
#[test]
fn digest_md5_with_the_address_works_on_the_default_realm_setup_for_every_client() {
    let dir = scratch("interop-digest-default");
    let redis = Redis::start(&dir);
    let stack = Stack::start(
        &dir,
        &redis,
        StackOptions {
            hostname: "relay-host.example".into(),
            realm: "relay-host.example".into(),
            extra_toml: "[sasl.limits]\nmax_failures_per_ip = 0\nmax_failures_per_user = 0\n"
                .into(),
            ..Default::default()
        },
    );
    stack.add_user("test", "mailserver.foo.com", PASSWORD);
    let (ok, text) = swaks(stack.submission, "DIGEST-MD5", USER, PASSWORD, &[]);
    assert!(ok && text.contains("235 2.7.0"), "swaks: {text}");
    assert!(
        swaks_challenges(&text)[0].contains("realm=\"relay-host.example\""),
        "the host's realm is offered: {text}"
    );
    let (ok, text) = swaks(stack.submission, "DIGEST-MD5", USER, WRONG, &[]);
    assert!(!ok && text.contains("535"), "swaks, wrong password: {text}");
    let (code, text) = curl(stack.submission, &dir, "DIGEST-MD5", PASSWORD);
    assert_eq!(code, 0, "curl: {text}");
    let (ok, text) = gsasl(stack.submission, "DIGEST-MD5", PASSWORD);
    assert!(ok, "gsasl: {text}");
    let log = stack.frontend.log_text();
    assert!(
        log.contains(&format!("authid={USER}, mech=DIGEST-MD5")),
        "{log}"
    );
}

#[test]
fn gsasl_scram_sha_256_plus_with_tls_exporter_logs_in_and_a_wrong_password_is_535() {
    let (_dir, _redis, stack) = stack("interop-gsasl");
    let (ok, text) = gsasl(stack.submission, "SCRAM-SHA-256-PLUS", PASSWORD);
    assert!(ok, "{text}");
    assert!(text.contains("AUTH SCRAM-SHA-256-PLUS"), "{text}");
    assert!(text.contains("235 2.7.0"), "{text}");
    // gsasl checked our v=: "server trusted".
    assert!(text.contains("server trusted"), "{text}");
    // The gs2 header names the binding: p=tls-exporter.
    let client_first = text
        .lines()
        .skip_while(|l| !l.starts_with("AUTH SCRAM-SHA-256-PLUS"))
        .nth(2)
        .unwrap_or("");
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(client_first.trim())
        .unwrap_or_default();
    assert!(
        decoded.starts_with(b"p=tls-exporter,,"),
        "{}",
        String::from_utf8_lossy(&decoded)
    );
    let (ok, text) = gsasl(stack.submission, "SCRAM-SHA-256-PLUS", WRONG);
    assert!(!ok && text.contains("535 5.7.8"), "{text}");
    let logs = stack.frontend.log_text();
    assert!(logs.contains("mech=SCRAM-SHA-256-PLUS, bits=0"), "{logs}");
    assert_no_password_logged(&stack);
}

// --------------------------------------------------------------- replicas

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

type Client = SaslAuthClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, InternalToken>,
>;

/// A client of sasl-auth at `addr` that presents the stack's internal token
/// (as a frontend does).
async fn connect(addr: std::net::SocketAddr, dir: &Path) -> Client {
    SaslAuthClient::with_interceptor(channel_to(addr).await, internal_token(dir))
}

fn result(
    r: Result<tonic::Response<pb::StepResponse>, tonic::Status>,
) -> pb::step_response::Result {
    r.expect("gRPC call").into_inner().result.expect("a result")
}

/// A stack with a second sasl-auth replica and a gRPC client to each (first,
/// second), for `body` to run exchanges across them.
fn across_two_replicas<F, Fut>(name: &str, body: F)
where
    F: FnOnce([Client; 2]) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    across_two_replicas_with(name, "", body)
}

/// As [`across_two_replicas`], with more keys of `[sasl]`.
fn across_two_replicas_with<F, Fut>(name: &str, sasl: &str, body: F)
where
    F: FnOnce([Client; 2]) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (_dir, _redis, stack) = stack_with(name, sasl);
    let (_replica, second) = stack.spawn_sasl_replica("sasl-auth-2");
    let first = sasl_addr(&stack);
    let rt = runtime();
    rt.block_on(async {
        body([
            connect(first, &stack.dir).await,
            connect(second, &stack.dir).await,
        ])
        .await;
    });
}

/// The first sasl-auth's gRPC address, from the stack's endpoints.
fn sasl_addr(stack: &Stack) -> SocketAddr {
    stack
        .endpoint("AUTHRELAY__ENDPOINTS__SASL_AUTH")
        .trim_start_matches("http://")
        .parse()
        .unwrap()
}

/// A runtime for the tests that speak gRPC to sasl-auth themselves.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Runs one exchange with Start on `replicas[0]` and each later step on the
/// next replica in turn; returns the client's messages and the outcome.
async fn exchange_across(
    replicas: &mut [Client],
    mech: Mechanism,
    creds: ClientCredentials,
    session: &str,
) -> (Vec<Vec<u8>>, pb::step_response::Result) {
    let mut client = ClientExchange::new(mech, creds).unwrap();
    let initial = client.initial_response();
    let mut sent = Vec::new();
    let mut turn = 0;
    let mut res = result(
        replicas[0]
            .start(pb::StartRequest {
                mechanism: mech.name().into(),
                initial_response: initial,
                session: Some(facts(session)),
                ..Default::default()
            })
            .await,
    );
    loop {
        match res {
            pb::step_response::Result::Challenge(ch) => {
                let response = match client.step(&ch.data).expect("client step") {
                    ClientStep::Respond(r) => r,
                    ClientStep::Done => Vec::new(),
                };
                sent.push(response.clone());
                turn += 1;
                let replica = &mut replicas[turn % replicas.len()];
                res = result(
                    replica
                        .step(pb::StepRequest {
                            exchange_id: ch.exchange_id,
                            response,
                            session: Some(facts(session)),
                        })
                        .await,
                );
            }
            pb::step_response::Result::Success(s) => {
                // rspauth / v=: the server proved it knows the secret.
                client
                    .verify_final(s.additional_data.as_deref().unwrap_or_default())
                    .expect("server's final message verifies");
                return (sent, pb::step_response::Result::Success(s));
            }
            failure => return (sent, failure),
        }
    }
}

#[test]
fn digest_md5_and_scram_sha_256_complete_with_each_step_on_the_other_replica_and_a_replayed_digest_response_is_refused()
 {
    across_two_replicas("interop-replicas", |mut replicas| async move {
        let digest_creds = || ClientCredentials {
            host: "mailserver.foo.com".into(),
            ..ClientCredentials::new("test", PASSWORD)
        };
        for mech in [Mechanism::DigestMd5, Mechanism::ScramSha256] {
            let (sent, res) =
                exchange_across(&mut replicas, mech, digest_creds(), &format!("s-{mech}")).await;
            match res {
                pb::step_response::Result::Success(s) => {
                    assert_eq!(s.authcid, USER, "{mech}");
                    assert_eq!(s.mechanism, mech.name());
                }
                other => panic!("{mech} across replicas: {other:?}"),
            }
            assert!(!sent.is_empty(), "{mech} took at least one step");
        }

        // Capture a good DIGEST-MD5 response (Start on 1, Step on 2) ...
        let (sent, res) =
            exchange_across(&mut replicas, Mechanism::DigestMd5, digest_creds(), "s-cap").await;
        assert!(matches!(res, pb::step_response::Result::Success(_)));
        let captured = sent[0].clone();
        // ... and replay it into a fresh exchange on either replica: the
        // nonce it answers is spent, so it is refused.
        for (start_on, step_on) in [(0, 1), (1, 0)] {
            let ch = match result(
                replicas[start_on]
                    .start(pb::StartRequest {
                        mechanism: "DIGEST-MD5".into(),
                        initial_response: None,
                        session: Some(facts("s-replay")),
                        ..Default::default()
                    })
                    .await,
            ) {
                pb::step_response::Result::Challenge(ch) => ch,
                other => panic!("{other:?}"),
            };
            match result(
                replicas[step_on]
                    .step(pb::StepRequest {
                        exchange_id: ch.exchange_id,
                        response: captured.clone(),
                        session: Some(facts("s-replay")),
                    })
                    .await,
            ) {
                pb::step_response::Result::Failure(f) => assert_eq!(
                    f.kind,
                    pb::failure::Kind::InvalidCredentials as i32,
                    "{f:?}"
                ),
                other => panic!("replayed DIGEST-MD5 response accepted: {other:?}"),
            }
        }

        // A step's sealed state is answered once: the replica that took it
        // refuses it the second time (`sasl.exchange_claims = "replica"`).
        let (a, b) = take_twice(&mut replicas, 1, 1, "s-twice").await;
        assert!(matches!(a, pb::step_response::Result::Success(_)), "{a:?}");
        assert_refused_as_spent(b);
    });
}

/// `sasl.exchange_claims = "shared"`: the claim is in Redis, so no two
/// replicas take the same step.
#[test]
fn with_shared_claims_a_step_is_taken_once_across_replicas() {
    across_two_replicas_with(
        "interop-shared-claims",
        "exchange_claims = \"shared\"",
        |mut replicas| async move {
            for (first, second) in [(1, 0), (0, 1), (0, 0)] {
                let session = format!("s-twice-{first}{second}");
                let (a, b) = take_twice(&mut replicas, first, second, &session).await;
                assert!(matches!(a, pb::step_response::Result::Success(_)), "{a:?}");
                assert_refused_as_spent(b);
            }
        },
    );
}

/// A DIGEST-MD5 challenge from `replicas[0]` answered correctly twice with
/// the same sealed state: first on `replicas[first]`, then on
/// `replicas[second]`. Returns both outcomes.
async fn take_twice(
    replicas: &mut [Client; 2],
    first: usize,
    second: usize,
    session: &str,
) -> (pb::step_response::Result, pb::step_response::Result) {
    let ch = match result(
        replicas[0]
            .start(pb::StartRequest {
                mechanism: "DIGEST-MD5".into(),
                initial_response: None,
                session: Some(facts(session)),
                ..Default::default()
            })
            .await,
    ) {
        pb::step_response::Result::Challenge(ch) => ch,
        other => panic!("{other:?}"),
    };
    let creds = ClientCredentials {
        host: "mailserver.foo.com".into(),
        ..ClientCredentials::new("test", PASSWORD)
    };
    let mut client = ClientExchange::new(Mechanism::DigestMd5, creds).unwrap();
    let ClientStep::Respond(response) = client.step(&ch.data).unwrap() else {
        panic!("no response")
    };
    let step = || pb::StepRequest {
        exchange_id: ch.exchange_id.clone(),
        response: response.clone(),
        session: Some(facts(session)),
    };
    let a = result(replicas[first].step(step()).await);
    let b = result(replicas[second].step(step()).await);
    (a, b)
}

fn assert_refused_as_spent(r: pb::step_response::Result) {
    match r {
        pb::step_response::Result::Failure(f) => {
            assert_eq!(f.kind, pb::failure::Kind::ExchangeExpired as i32, "{f:?}")
        }
        other => panic!("a finished exchange was stepped again: {other:?}"),
    }
}

/// Between steps the exchange travels sealed in the exchange id: any
/// replica takes any step, Redis holds nothing per step, the frontend can
/// read nothing in it (not even the LOGIN user name), and a token from
/// another session, an altered one or one in an old unsealed form is
/// refused with a log line — never resumed.
#[test]
fn sealed_exchange_state_moves_between_replicas_and_forgeries_are_refused() {
    let (_dir, redis, stack) = stack("interop-sealed");
    let (second_proc, second) = stack.spawn_sasl_replica("sasl-auth-2");
    let first = sasl_addr(&stack);
    let rt = runtime();
    rt.block_on(async {
        let mut replicas = [
            connect(first, &stack.dir).await,
            connect(second, &stack.dir).await,
        ];
        let mut res = result(
            replicas[0]
                .start(pb::StartRequest {
                    mechanism: "LOGIN".into(),
                    initial_response: None,
                    session: Some(facts("s-login")),
                    ..Default::default()
                })
                .await,
        );
        for (turn, answer) in [&b"test@mailserver.foo.com"[..], PASSWORD.as_bytes()]
            .into_iter()
            .enumerate()
        {
            let pb::step_response::Result::Challenge(ch) = res else {
                panic!("LOGIN prompt {turn}: {res:?}")
            };
            assert!(ch.exchange_id.starts_with("v1."), "{}", ch.exchange_id);
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(&ch.exchange_id[3..])
                .unwrap();
            assert!(
                !String::from_utf8_lossy(&raw).contains("mailserver.foo.com"),
                "the sealed state shows the user name"
            );
            res = result(
                replicas[(turn + 1) % 2]
                    .step(pb::StepRequest {
                        exchange_id: ch.exchange_id,
                        response: answer.to_vec(),
                        session: Some(facts("s-login")),
                    })
                    .await,
            );
        }
        match &res {
            pb::step_response::Result::Success(s) => assert_eq!(s.authcid, USER),
            other => panic!("LOGIN across replicas: {other:?}"),
        }

        // A challenge stores nothing in Redis.
        let before = redis.keys();
        let ch = match result(
            replicas[0]
                .start(pb::StartRequest {
                    mechanism: "CRAM-MD5".into(),
                    initial_response: None,
                    session: Some(facts("s-cram")),
                    ..Default::default()
                })
                .await,
        ) {
            pb::step_response::Result::Challenge(ch) => ch,
            other => panic!("{other:?}"),
        };
        assert_eq!(redis.keys(), before, "a CRAM-MD5 challenge wrote to Redis");

        let mut client =
            ClientExchange::new(Mechanism::CramMd5, ClientCredentials::new(USER, PASSWORD))
                .unwrap();
        let ClientStep::Respond(response) = client.step(&ch.data).unwrap() else {
            panic!("no CRAM-MD5 response")
        };
        let mut tampered = ch.exchange_id.clone().into_bytes();
        let i = tampered.len() / 2;
        tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
        let forged_inline = {
            let cfg = authrelay_sasl::ServerConfig {
                hostname: "mailserver.foo.com".into(),
                realms: vec!["mailserver.foo.com".into()],
                service: "smtp".into(),
                ..Default::default()
            };
            let mut cram = authrelay_sasl::ServerExchange::new(Mechanism::CramMd5);
            let _ = cram.start(&cfg, None);
            let record =
                json!({"session_id": "s-cram", "client_ip": "127.0.0.1", "exchange": cram});
            format!(
                "inline:{}",
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(serde_json::to_vec(&record).unwrap())
            )
        };
        for (what, id, session) in [
            ("another session's", ch.exchange_id.clone(), "s-other"),
            ("an altered", String::from_utf8(tampered).unwrap(), "s-cram"),
            ("an unsealed (old inline form)", forged_inline, "s-cram"),
            ("an empty", String::new(), "s-cram"),
        ] {
            match result(
                replicas[1]
                    .step(pb::StepRequest {
                        exchange_id: id,
                        response: response.clone(),
                        session: Some(facts(session)),
                    })
                    .await,
            ) {
                pb::step_response::Result::Failure(f) => assert_eq!(
                    f.kind,
                    pb::failure::Kind::ExchangeExpired as i32,
                    "{what}: {f:?}"
                ),
                other => panic!("{what} sealed state was resumed: {other:?}"),
            }
        }
        // The genuine one still works, on the other replica, once: the
        // replica that took it refuses it after (across replicas too with
        // shared claims: `with_shared_claims_a_step_is_taken_once_across_replicas`).
        let genuine = || pb::StepRequest {
            exchange_id: ch.exchange_id.clone(),
            response: response.clone(),
            session: Some(facts("s-cram")),
        };
        assert!(matches!(
            result(replicas[1].step(genuine()).await),
            pb::step_response::Result::Success(_)
        ));
        match result(replicas[1].step(genuine()).await) {
            pb::step_response::Result::Failure(f) => {
                assert_eq!(f.kind, pb::failure::Kind::ExchangeExpired as i32, "{f:?}")
            }
            other => panic!("a CRAM-MD5 step was taken twice: {other:?}"),
        }
    });
    let log = second_proc.log_text();
    for why in [
        "altered, or sealed for another session",
        "not a sealed exchange",
        "replayed (its step was already taken)",
    ] {
        assert!(
            log.contains(&format!("sealed SASL exchange refused: {why}")),
            "no log line for {why}:\n{log}"
        );
    }
}

/// Protocol failures get their own answers (RFC 4954 / RFC 5802), unlike
/// a wrong password: an unsupported or mismatched channel binding is
/// CHANNEL_BINDING (the frontend's `535 5.7.8 … channel binding mismatch`)
/// with SCRAM's `e=` server-error to show the client first; an undecodable
/// message is MALFORMED (`501 5.5.2`).
#[test]
fn channel_binding_and_malformed_failures_are_told_apart_from_a_wrong_password() {
    across_two_replicas("interop-cb-errors", |mut replicas| async move {
        let mut session = facts("s-cb");
        session.cb_tls_exporter = b"exporter-bytes-of-this-session-0".to_vec();
        let start = |first: &str| pb::StartRequest {
            mechanism: "SCRAM-SHA-256-PLUS".into(),
            initial_response: Some(first.as_bytes().to_vec()),
            session: Some(session.clone()),
            ..Default::default()
        };
        let failure = |r: pb::step_response::Result| match r {
            pb::step_response::Result::Failure(f) => f,
            other => panic!("{other:?}"),
        };
        // A TLS 1.2 client's binding on a session that has only tls-exporter.
        let f = failure(result(
            replicas[0]
                .start(start("p=tls-unique,,n=test,r=abcdefghijklmnop"))
                .await,
        ));
        assert_eq!(f.kind, pb::failure::Kind::ChannelBinding as i32, "{f:?}");
        assert_eq!(
            f.additional_data.as_deref(),
            Some(&b"e=unsupported-channel-binding-type"[..])
        );
        // -PLUS without any binding at all.
        let f = failure(result(
            replicas[1]
                .start(start("n,,n=test,r=abcdefghijklmnop"))
                .await,
        ));
        assert_eq!(f.kind, pb::failure::Kind::ChannelBinding as i32, "{f:?}");
        // Garbage: malformed, not a credential failure.
        let f = failure(result(replicas[0].start(start("garbage")).await));
        assert_eq!(f.kind, pb::failure::Kind::Malformed as i32, "{f:?}");
        assert!(f.additional_data.is_none());
    });
}

/// Keys rotate without failing exchanges in flight: a replica whose
/// current key is new and whose previous key is the old one takes a step
/// sealed under the old key; a replica that only knows the old key refuses
/// what the new one sealed.
#[test]
fn exchange_keys_rotate_without_failing_exchanges_in_flight() {
    let (dir, _redis, stack) = stack("interop-rotate");
    let old = exchange_key(&dir);
    let new = dir.join("exchange-new.key");
    std::fs::write(&new, "c0ffee".repeat(10) + "c0ff").unwrap();
    let env = |k: &str, v: &std::path::Path| (k.to_owned(), v.display().to_string());
    let (_rotated, rotated) = stack.spawn_sasl_replica_env(
        "sasl-auth-rotated",
        &[
            env("AUTHRELAY__SASL__EXCHANGE_KEY_FILE", &new),
            env("AUTHRELAY__SASL__EXCHANGE_PREVIOUS_KEY_FILE", &old),
        ],
    );
    let first = sasl_addr(&stack);
    let rt = runtime();
    let digest_creds = || ClientCredentials {
        host: "mailserver.foo.com".into(),
        ..ClientCredentials::new("test", PASSWORD)
    };
    rt.block_on(async {
        // old → rotated: accepted.
        let mut pair = [
            connect(first, &stack.dir).await,
            connect(rotated, &stack.dir).await,
        ];
        let (_, res) =
            exchange_across(&mut pair, Mechanism::DigestMd5, digest_creds(), "s-rot-1").await;
        assert!(
            matches!(res, pb::step_response::Result::Success(_)),
            "a step sealed under the previous key: {res:?}"
        );
        // rotated → old: the old-key replica cannot open the new key's seal.
        let mut pair = [
            connect(rotated, &stack.dir).await,
            connect(first, &stack.dir).await,
        ];
        let (_, res) =
            exchange_across(&mut pair, Mechanism::DigestMd5, digest_creds(), "s-rot-2").await;
        match res {
            pb::step_response::Result::Failure(f) => {
                assert_eq!(f.kind, pb::failure::Kind::ExchangeExpired as i32, "{f:?}")
            }
            other => panic!("a replica opened a key it does not hold: {other:?}"),
        }
    });
}

/// The frontend balancing each gRPC call over two replicas: every DIGEST-MD5
/// (swaks) and SCRAM-SHA-256 (scramp) login succeeds, whichever replica
/// takes which step.
#[test]
fn frontend_balancing_over_two_replicas_completes_every_digest_md5_and_scram_login() {
    let (_dir, _redis, stack) = stack("interop-balanced");
    let (_replica, second) = stack.spawn_sasl_replica("sasl-auth-2");
    let both = format!(
        "{},http://{second}",
        stack.endpoint("AUTHRELAY__ENDPOINTS__SASL_AUTH")
    );
    let (_fe, submission) = stack.spawn_frontend_env(
        "smtp-frontend-balanced",
        &[("AUTHRELAY__ENDPOINTS__SASL_AUTH".into(), both)],
    );
    for i in 0..8 {
        let (ok, text) = swaks(submission, "DIGEST-MD5", "test", PASSWORD, &[]);
        assert!(ok && text.contains("235 2.7.0"), "DIGEST-MD5 #{i}: {text}");
        let res = scramp(
            submission,
            json!({"mech": "SCRAM-SHA-256", "user": USER, "initial_response": i % 2 == 0}),
            PASSWORD,
        );
        assert_eq!(res["auth"][0], 235, "SCRAM-SHA-256 #{i}: {res}");
    }
}

/// LOGIN's prompts and PLAIN's empty challenge hold no server state: the
/// frontend sends them itself and hands the answers to sasl-auth with the
/// start, so such an AUTH costs one call to sasl-auth however many prompts
/// the client answered (counted on the frontend's gRPC client metric). The
/// SMTP dialogue is the one clients know; sasl-auth takes answers only to
/// the prompts the mechanism really asks.
#[test]
fn fixed_prompts_are_answered_in_one_call_to_sasl_auth() {
    let dir = scratch("interop-fixed-prompts");
    let redis = Redis::start(&dir);
    let mut stack = Stack::start(
        &dir,
        &redis,
        StackOptions {
            extra_toml: "[sasl]\nrealms = \"mailserver.foo.com\"\n\
                         allow_plaintext_without_tls = true\n\n\
                         [sasl.limits]\nmax_failures_per_ip = 0\nmax_failures_per_user = 0\n\n\
                         [telemetry]\nmetrics_listen = \"127.0.0.1:0\"\n"
                .into(),
            ..Default::default()
        },
    );
    stack.add_user("test", "mailserver.foo.com", PASSWORD);
    let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let session = |lines: &[(&str, u16, &str)]| {
        let mut c = Raw::connect(stack.relay);
        c.cmd("EHLO client.example");
        for (line, want, text) in lines {
            let (code, got) = c.cmd(line);
            assert_eq!(code, *want, "{line:?} -> {got}");
            assert!(got.contains(text), "{line:?} -> {got}, wanted {text:?}");
        }
        c.cmd("QUIT");
    };
    // LOGIN, prompted for both.
    session(&[
        ("AUTH LOGIN", 334, "VXNlcm5hbWU6"),
        (&b(USER), 334, "UGFzc3dvcmQ6"),
        (&b(PASSWORD), 235, "2.7.0"),
    ]);
    // LOGIN with the user name on the AUTH line; a wrong password.
    session(&[
        (&format!("AUTH LOGIN {}", b(USER)), 334, "UGFzc3dvcmQ6"),
        (&b(WRONG), 535, "5.7.8"),
    ]);
    // PLAIN without an initial response: an empty 334 first.
    session(&[
        ("AUTH PLAIN", 334, ""),
        (&b(&format!("\0{USER}\0{PASSWORD}")), 235, "2.7.0"),
    ]);
    // Cancelled at a prompt, and an answer that is not base64: no call.
    session(&[
        ("AUTH LOGIN", 334, "VXNlcm5hbWU6"),
        ("*", 501, "cancelled"),
        ("AUTH LOGIN", 334, "VXNlcm5hbWU6"),
        ("%%%", 501, "5.5.2"),
    ]);
    let metrics = http_get(stack.frontend.addr("metrics"), "/metrics");
    let count = |op: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("authrelay_grpc_client_duration_seconds_count{")
                    && l.contains(&format!("operation=\"{op}\""))
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    };
    assert_eq!(count("sasl-auth/Start"), 3, "{metrics}");
    assert_eq!(count("sasl-auth/Step"), 0, "{metrics}");

    // sasl-auth itself: answers only to the prompts the mechanism asks.
    let addr = sasl_addr(&stack);
    let rt = runtime();
    rt.block_on(async {
        let mut c = connect(addr, &stack.dir).await;
        let start = |mech: &str, answers: &[&str]| pb::StartRequest {
            mechanism: mech.into(),
            initial_response: None,
            session: Some(facts("s-prompts")),
            responses: answers.iter().map(|a| a.as_bytes().to_vec()).collect(),
        };
        match result(c.start(start("LOGIN", &[USER, PASSWORD])).await) {
            pb::step_response::Result::Success(s) => assert_eq!(s.authcid, USER),
            other => panic!("LOGIN answered ahead: {other:?}"),
        }
        // Half the answers: the exchange waits for the rest, sealed.
        match result(c.start(start("LOGIN", &[USER])).await) {
            pb::step_response::Result::Challenge(ch) => assert_eq!(ch.data, b"Password:"),
            other => panic!("LOGIN half answered: {other:?}"),
        }
        for (mech, answers) in [
            // CRAM-MD5's challenge is a nonce: nothing can answer it ahead.
            ("CRAM-MD5", &["test 0123456789abcdef0123456789abcdef"][..]),
            ("SCRAM-SHA-256", &["n,,n=test,r=abc"][..]),
            ("LOGIN", &[USER, PASSWORD, "more"][..]),
        ] {
            match result(c.start(start(mech, answers)).await) {
                pb::step_response::Result::Failure(f) => {
                    assert_eq!(f.kind, pb::failure::Kind::Malformed as i32, "{mech}: {f:?}")
                }
                other => panic!("{mech} answered ahead: {other:?}"),
            }
        }
    });
}
