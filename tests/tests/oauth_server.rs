//! OAUTHBEARER (RFC 7628) and XOAUTH2 as server mechanisms, end to end:
//! an OAuth issuer on loopback over HTTPS (tests/support/oauth_issuer.py:
//! joserfc keys, a JWKS and discovery documents, tokens signed with them,
//! a private CA), the separate services (and `authrelay serve`) configured
//! to trust it, and curl as the SMTP client (`--oauth2-bearer` over
//! STARTTLS; the token reaches curl through a 0600 config file, not argv).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use authrelay_e2e::*;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};

const AUDIENCE: &str = "smtp.mailserver.foo.com";
const ALICE: &str = "alice@mailserver.foo.com";

/// The issuer process and how to reach it.
struct Issuer {
    proc: Proc,
    url: String,
    ca: PathBuf,
}

impl Issuer {
    fn start(dir: &Path) -> Issuer {
        let mut cmd = Command::new("python3");
        cmd.arg(support("oauth_issuer.py")).arg(dir);
        let mut proc = Proc::spawn("oauth issuer", cmd, dir.join("issuer.log"));
        let line = proc.wait_line("issuer listening on");
        let url = line.rsplit(' ').next().unwrap().trim().to_owned();
        assert!(
            url.starts_with("https://127.0.0.1:"),
            "{line}: the issuer needs Python's joserfc and cryptography \
             (python3 -m pip install joserfc; scripts/test.sh installs it)"
        );
        Issuer {
            proc,
            url,
            ca: dir.join("issuer-ca.pem"),
        }
    }

    /// An HTTPS request to the issuer with curl, trusting only its CA.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let mut cmd = Command::new(require_tool("curl", "apt-get install curl"));
        cmd.args([
            "-sS",
            "--fail",
            "--max-time",
            "20",
            "-X",
            method,
            "--cacert",
        ])
        .arg(&self.ca)
        .arg(format!("{}{path}", self.url));
        if let Some(b) = body {
            cmd.args(["-H", "Content-Type: application/json", "-d"])
                .arg(b.to_string());
        }
        let out = cmd.output().expect("run curl");
        assert!(
            out.status.success(),
            "{method} {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("issuer answers JSON")
    }

    /// A token signed with the issuer's current `alg` key (or a rogue key
    /// under the same kid).
    fn mint_with(&self, claims: Value, alg: &str, rogue: bool) -> String {
        let r = self.call(
            "POST",
            "/mint",
            Some(json!({"claims": claims, "alg": alg, "rogue": rogue})),
        );
        r["token"].as_str().unwrap().to_owned()
    }

    fn mint(&self, claims: Value) -> String {
        self.mint_with(claims, "RS256", false)
    }

    fn jwks_fetches(&self) -> u64 {
        self.call("GET", "/stats", None)["jwks_fetches"]
            .as_u64()
            .unwrap()
    }

    /// Claims for `email`, valid for ten minutes, for this relay.
    fn claims(&self, email: &str) -> Value {
        let now = now();
        json!({"iss": self.url, "aud": AUDIENCE, "sub": "subject-1", "email": email,
               "iat": now, "exp": now + 600})
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The `sasl.oauth` section for `issuer`, a second issuer (`…/strict`,
/// found by discovery) that requires local users, and bearer mechanisms
/// offered and trusted beside PLAIN.
fn oauth_toml(issuer: &Issuer) -> String {
    format!(
        r#"
[sasl]
mechanisms = "OAUTHBEARER XOAUTH2 SCRAM-SHA-256 PLAIN"
trusted = "OAUTHBEARER XOAUTH2 SCRAM-SHA-256 PLAIN"

[sasl.limits]
max_failures_per_ip = 0
max_failures_per_user = 0

[sasl.oauth]
jwks_min_refresh = "1s"
leeway = "5s"

[[sasl.oauth.issuers]]
issuer = "{url}"
jwks_uri = "{url}/jwks"
audience = "{AUDIENCE}"
user_claim = "email"
ca_file = "{ca}"
scope = "smtp.send"

[[sasl.oauth.issuers]]
issuer = "{url}/strict"
audience = "{AUDIENCE}"
user_claim = "preferred_username"
realm = "mailserver.foo.com"
ca_file = "{ca}"
require_local_user = true
scope = "smtp.send"
"#,
        url = issuer.url,
        ca = issuer.ca.display()
    )
}

struct Setup {
    dir: PathBuf,
    _redis: Redis,
    sink: Sink,
    issuer: Issuer,
    stack: Stack,
}

fn setup(name: &str) -> Setup {
    setup_with(name, "")
}

/// `extra` TOML over [`oauth_toml`].
fn setup_with(name: &str, extra: &str) -> Setup {
    let dir = scratch(name);
    let issuer = Issuer::start(&dir);
    let redis = Redis::start(&dir);
    let sink = Sink::start(&dir);
    let stack = Stack::start(
        &dir,
        &redis,
        StackOptions {
            smarthost: Some(sink.addr),
            extra_toml: merge_toml(&oauth_toml(&issuer), extra),
            ..Default::default()
        },
    );
    Setup {
        dir,
        _redis: redis,
        sink,
        issuer,
        stack,
    }
}

/// One login attempt and what came of it.
struct Attempt {
    /// 235.
    logged_in: bool,
    /// The message was accepted after it.
    sent: bool,
    /// The RFC 7628 §3.2.2 challenge, decoded.
    error_json: Option<Value>,
    /// The client answered it with the dummy `AQ==` (OAUTHBEARER).
    dummy_sent: bool,
    /// The exchange ended with 535 5.7.8.
    failed_535: bool,
    transcript: String,
}

/// Logs in with `mech` and sends a message: OAUTHBEARER with curl
/// (`--oauth2-bearer` over STARTTLS; curl 7.88 picks OAUTHBEARER whenever
/// it is offered, `--login-options` notwithstanding), XOAUTH2 with Python's
/// smtplib and an authobject, as Google documents it. `user` goes into
/// OAUTHBEARER's `a=` / XOAUTH2's `user=`. Tokens reach the clients through
/// a 0600 file or the environment, never argv.
fn login(mech: &str, server: SocketAddr, dir: &Path, user: &str, token: &str) -> Attempt {
    match mech {
        "OAUTHBEARER" => curl(server, dir, user, token),
        "XOAUTH2" => {
            let res = smtplib(
                json!({"port": server.port(), "starttls": true, "mech": "XOAUTH2", "user": user,
                       "from": ALICE, "to": ["friend@outside.example"]}),
                token,
            );
            let auth = res["auth"][0].as_u64().unwrap_or(0);
            let text = res["auth"][1].as_str().unwrap_or_default();
            Attempt {
                logged_in: auth == 235,
                sent: res["send"]["ok"] == true,
                error_json: res["challenges"]
                    .as_array()
                    .and_then(|c| c.first())
                    .and_then(|c| serde_json::from_str(c.as_str()?).ok()),
                dummy_sent: true,
                failed_535: auth == 535 && text.starts_with("5.7.8"),
                transcript: res.to_string(),
            }
        }
        _ => unreachable!("{mech}"),
    }
}

fn curl(server: SocketAddr, dir: &Path, user: &str, token: &str) -> Attempt {
    let curl = require_tool("curl", "apt-get install curl");
    let cfg = dir.join(format!("curl-{}.cfg", rand_suffix()));
    std::fs::write(
        &cfg,
        format!("user = \"{user}:\"\noauth2-bearer = \"{token}\"\n"),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();
    let msg = dir.join("curl-msg.txt");
    std::fs::write(&msg, "Subject: oauth\r\n\r\nhello with a token\r\n").unwrap();
    let out = Command::new(curl)
        .arg("-sSv")
        .arg(format!("smtp://{server}"))
        .args([
            "--ssl-reqd",
            "-k",
            "--login-options",
            "AUTH=OAUTHBEARER",
            "-K",
        ])
        .arg(&cfg)
        .args([
            "--mail-from",
            ALICE,
            "--mail-rcpt",
            "friend@outside.example",
        ])
        .arg("-T")
        .arg(&msg)
        .args(["--max-time", "60"])
        .stdin(Stdio::null())
        .output()
        .expect("run curl");
    let _ = std::fs::remove_file(&cfg);
    let transcript = String::from_utf8_lossy(&out.stderr).into_owned();
    let replies: Vec<&str> = transcript
        .lines()
        .filter_map(|l| l.strip_prefix("< "))
        .collect();
    let error_json = replies
        .iter()
        .filter_map(|r| r.strip_prefix("334 "))
        .find(|c| !c.trim().is_empty())
        .and_then(|c| serde_json::from_slice(&STANDARD.decode(c.trim()).ok()?).ok());
    Attempt {
        logged_in: transcript.contains("> AUTH OAUTHBEARER")
            && replies.iter().any(|r| r.starts_with("235 ")),
        sent: out.status.success(),
        error_json,
        dummy_sent: transcript.lines().any(|l| l.trim() == "> AQ=="),
        failed_535: replies.iter().any(|r| r.starts_with("535 5.7.8")),
        transcript,
    }
}

fn rand_suffix() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// RFC 7628 §3.2.2: the 334 carrying the error JSON, the client's
/// answer (`AQ==` for OAUTHBEARER), then 535 5.7.8. Returns the JSON.
fn assert_refused(label: &str, a: &Attempt) -> Value {
    assert!(
        !a.logged_in && !a.sent,
        "{label}: logged in:\n{}",
        a.transcript
    );
    let json = a
        .error_json
        .clone()
        .unwrap_or_else(|| panic!("{label}: no RFC 7628 error challenge:\n{}", a.transcript));
    assert_eq!(json["status"], "invalid_token", "{json}");
    assert_eq!(json["scope"], "smtp.send", "{json}");
    assert!(
        a.dummy_sent,
        "{label}: no RFC 7628 dummy response:\n{}",
        a.transcript
    );
    assert!(
        a.failed_535,
        "{label}: no 535 5.7.8 after the error:\n{}",
        a.transcript
    );
    json
}

fn assert_logged_in(label: &str, a: &Attempt) {
    assert!(
        a.logged_in && a.sent,
        "{label}: not logged in or not sent:\n{}",
        a.transcript
    );
    assert!(a.error_json.is_none(), "{label}: {}", a.transcript);
}

fn wait_log(stack: &Stack, needle: &str) {
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while !stack.logs().contains(needle) {
        assert!(
            std::time::Instant::now() < until,
            "log line {needle:?} missing:\n{}",
            stack.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn unverified_iss(token: &str) -> String {
    let payload = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    claims["iss"].as_str().unwrap_or_default().to_owned()
}

fn jwt_none(claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{body}.")
}

// ---------------------------------------------------------------- offered

#[test]
fn bearer_mechanisms_are_offered_only_after_starttls_and_refused_in_the_clear() {
    let s = setup("oauth-offer");
    let mut c = Raw::connect(s.stack.submission);
    let (code, ehlo) = c.cmd("EHLO client.example");
    assert_eq!(code, 250);
    assert!(
        !ehlo.contains("OAUTHBEARER") && !ehlo.contains("XOAUTH2"),
        "{ehlo}"
    );
    let token = s.issuer.mint(s.issuer.claims(ALICE));
    let msg = authrelay_sasl::oauth::oauthbearer_message(None, None, None, &token);
    let (code, text) = c.cmd(&format!("AUTH OAUTHBEARER {}", b64(&msg)));
    assert_eq!(code, 538, "a token in the clear must be refused: {text}");
    let (code, text) = c.cmd("AUTH XOAUTH2");
    assert_eq!(code, 538, "{text}");
    assert_eq!(c.cmd("STARTTLS").0, 220);
    let mut t = c.into_tls();
    let (code, ehlo) = t.cmd("EHLO client.example");
    assert_eq!(code, 250);
    let auth = ehlo.lines().find(|l| l.contains("AUTH ")).unwrap();
    assert!(
        auth.contains("OAUTHBEARER") && auth.contains("XOAUTH2"),
        "{ehlo}"
    );
    // Without an initial response: an empty challenge, then the message.
    let (code, text) = t.cmd("AUTH OAUTHBEARER");
    assert_eq!((code, text.trim()), (334, "334"), "{text}");
    let (code, text) = t.cmd(&b64(&msg));
    assert_eq!(code, 235, "{text}\n{}", s.stack.logs());
    assert!(!s.stack.logs().contains(&token), "a token reached a log");
}

// ---------------------------------------------------------------- valid

#[test]
fn valid_tokens_log_in_with_oauthbearer_and_xoauth2_and_the_mail_relays() {
    let s = setup("oauth-valid");
    let mut tokens = Vec::new();
    for (mech, alg) in [
        ("OAUTHBEARER", "RS256"),
        ("XOAUTH2", "ES256"),
        ("OAUTHBEARER", "EdDSA"),
    ] {
        let token = s.issuer.mint_with(s.issuer.claims(ALICE), alg, false);
        let a = login(mech, s.stack.submission, &s.dir, ALICE, &token);
        assert_logged_in(&format!("{mech}/{alg}"), &a);
        tokens.push(token);
    }
    let messages = s.sink.wait_messages(3, Duration::from_secs(30));
    assert_eq!(messages.len(), 3);
    wait_log(
        &s.stack,
        &format!("AUTH=server, relay=[127.0.0.1], authid={ALICE}, mech=OAUTHBEARER, bits=0"),
    );
    wait_log(
        &s.stack,
        &format!("AUTH=server, relay=[127.0.0.1], authid={ALICE}, mech=XOAUTH2, bits=0"),
    );
    let logs = s.stack.logs();
    for t in &tokens {
        let signature = t.rsplit('.').next().unwrap();
        assert!(
            !logs.contains(t.as_str()) && !logs.contains(signature),
            "a token reached a log"
        );
    }
    // The JWKS was fetched (at start) and counted.
    assert!(s.issuer.jwks_fetches() >= 1);
}

// ---------------------------------------------------------------- refused

#[test]
fn refused_tokens_get_the_rfc7628_error_json_then_535() {
    let s = setup("oauth-refused");
    let iss = s.issuer.url.clone();
    let now = now();
    let base = s.issuer.claims(ALICE);
    let with = |k: &str, v: Value| {
        let mut c = base.clone();
        c[k] = v;
        c
    };
    let cases: Vec<(&str, String)> = vec![
        (
            "token expired",
            s.issuer.mint(with("exp", json!(now - 600))),
        ),
        (
            "token not yet valid (nbf)",
            s.issuer.mint(with("nbf", json!(now + 600))),
        ),
        (
            "wrong audience",
            s.issuer.mint(with("aud", json!("another-app"))),
        ),
        (
            "issuer not configured",
            s.issuer.mint(with("iss", json!("https://evil.example"))),
        ),
        (
            // Signed by the issuer's key but claiming the strict issuer
            // with a user claim it lacks.
            "user claim missing or not a user name",
            s.issuer.mint(with("iss", json!(format!("{iss}/strict")))),
        ),
        (
            "bad signature",
            s.issuer.mint_with(base.clone(), "RS256", true),
        ),
        (
            "bad signature",
            s.issuer.mint_with(base.clone(), "ES256", true),
        ),
        (
            "not a signed JWT (or an unknown algorithm)",
            jwt_none(&base),
        ),
        ("a required claim (exp, iss, aud) is missing", {
            let mut c = base.clone();
            c.as_object_mut().unwrap().remove("exp");
            s.issuer.mint(c)
        }),
    ];
    for (why, token) in &cases {
        for mech in ["OAUTHBEARER", "XOAUTH2"] {
            let a = login(mech, s.stack.submission, &s.dir, ALICE, token);
            let json = assert_refused(mech, &a);
            // The issuer the token named, if configured, else the first:
            // only the one found by discovery has a document to point at.
            let names_strict = unverified_iss(token).ends_with("/strict");
            assert_eq!(
                json.get("openid-configuration").is_some(),
                names_strict,
                "{why}: {json}"
            );
            wait_log(
                &s.stack,
                &format!(
                    "AUTH failure ({mech}): invalid bearer token: {why}, relay=[127.0.0.1], authid={ALICE}"
                ),
            );
        }
    }
    assert_eq!(s.sink.messages().len(), 0, "a refused login relayed mail");
    let logs = s.stack.logs();
    for (_, t) in &cases {
        assert!(!logs.contains(t.as_str()), "a token reached a log");
    }
}

#[test]
fn an_authzid_other_than_the_tokens_user_is_refused() {
    let s = setup("oauth-authzid");
    let token = s.issuer.mint(s.issuer.claims(ALICE));
    for mech in ["OAUTHBEARER", "XOAUTH2"] {
        let a = login(
            mech,
            s.stack.submission,
            &s.dir,
            "mallory@mailserver.foo.com",
            &token,
        );
        assert_refused(mech, &a);
        wait_log(
            &s.stack,
            &format!(
                "AUTH failure ({mech}): invalid bearer token: authzid is not the token's user"
            ),
        );
    }
    // The same token as its own user is fine.
    let a = login("OAUTHBEARER", s.stack.submission, &s.dir, ALICE, &token);
    assert_logged_in("OAUTHBEARER", &a);
}

#[test]
fn refused_tokens_count_toward_the_brute_force_limit_like_wrong_passwords() {
    let s = setup_with(
        "oauth-limits",
        "[sasl.limits]\nwindow = \"60s\"\nmax_failures_per_ip = 3\nblock_delay = \"1s\"\n",
    );
    let mut expired = s.issuer.claims(ALICE);
    expired["exp"] = json!(now() - 600);
    let expired = s.issuer.mint(expired);
    for _ in 0..3 {
        let a = login("OAUTHBEARER", s.stack.submission, &s.dir, ALICE, &expired);
        assert_refused("OAUTHBEARER", &a);
    }
    // Past the limit even a good token from that address waits for the window.
    let good = s.issuer.mint(s.issuer.claims(ALICE));
    let a = login("OAUTHBEARER", s.stack.submission, &s.dir, ALICE, &good);
    assert!(!a.logged_in, "{}", a.transcript);
    assert!(
        a.transcript.contains("< 454 4.7.0"),
        "a blocked address must get 454 4.7.0:\n{}",
        a.transcript
    );
}

#[test]
fn an_unreachable_issuer_whose_keys_we_never_had_fails_closed_with_454() {
    let dir = scratch("oauth-issuer-down");
    let mut issuer = Issuer::start(&dir);
    let token = issuer.mint(issuer.claims(ALICE));
    issuer.proc.kill();
    let redis = Redis::start(&dir);
    let stack = Stack::start(
        &dir,
        &redis,
        StackOptions {
            extra_toml: oauth_toml(&issuer),
            ..Default::default()
        },
    );
    let a = login("OAUTHBEARER", stack.submission, &dir, ALICE, &token);
    assert!(!a.logged_in, "{}", a.transcript);
    assert!(
        a.transcript.contains("< 454 4.7.0"),
        "no keys and no issuer must be 454 4.7.0, not 235 or 535:\n{}",
        a.transcript
    );
    assert!(a.error_json.is_none(), "{}", a.transcript);
    wait_log(&stack, "JWKS fetch failed");
}

// ---------------------------------------------------------------- rotation

#[test]
fn a_token_signed_by_a_rotated_in_key_is_accepted_after_the_jwks_is_fetched_again() {
    let s = setup("oauth-rotation");
    let old = s.issuer.mint(s.issuer.claims(ALICE));
    let a = login("OAUTHBEARER", s.stack.submission, &s.dir, ALICE, &old);
    assert_logged_in("old key", &a);
    let before = s.issuer.jwks_fetches();
    let rotated = s.issuer.call("POST", "/rotate", None);
    let kid = rotated["kid"].as_str().unwrap().to_owned();
    // sasl.oauth.jwks_min_refresh = 1s: let the rate limit pass.
    std::thread::sleep(Duration::from_millis(1200));
    let new = s.issuer.mint(s.issuer.claims(ALICE));
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(new.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["kid"], kid.as_str());
    let a = login("XOAUTH2", s.stack.submission, &s.dir, ALICE, &new);
    assert_logged_in("rotated key", &a);
    assert_eq!(
        s.issuer.jwks_fetches(),
        before + 1,
        "the unknown kid should have fetched the JWKS exactly once"
    );
    // The old key left the JWKS: its tokens no longer verify.
    std::thread::sleep(Duration::from_millis(1200));
    let a = login("OAUTHBEARER", s.stack.submission, &s.dir, ALICE, &old);
    assert_refused("OAUTHBEARER", &a);
    wait_log(
        &s.stack,
        "invalid bearer token: signing key not in the issuer's key set",
    );
    // A burst of made-up kids costs the issuer at most one fetch per
    // jwks_min_refresh (1s here), not one per token.
    let fetches = s.issuer.jwks_fetches();
    let burst = std::time::Instant::now();
    for _ in 0..6 {
        let forged = s.issuer.mint(s.issuer.claims(ALICE));
        let mut parts: Vec<String> = forged.split('.').map(str::to_owned).collect();
        parts[0] = URL_SAFE_NO_PAD.encode(
            json!({"alg": "RS256", "typ": "JWT", "kid": format!("nope-{}", rand_suffix())})
                .to_string(),
        );
        let a = login(
            "OAUTHBEARER",
            s.stack.submission,
            &s.dir,
            ALICE,
            &parts.join("."),
        );
        assert_refused("OAUTHBEARER", &a);
    }
    let allowed = 1 + burst.elapsed().as_secs();
    let made = s.issuer.jwks_fetches() - fetches;
    assert!(
        made <= allowed,
        "6 made-up kids in {:?} fetched the JWKS {made} times",
        burst.elapsed()
    );
}

// ---------------------------------------------------------------- local users

#[test]
fn require_local_user_admits_only_users_in_the_credential_store() {
    let s = setup("oauth-local-user");
    let strict = format!("{}/strict", s.issuer.url);
    let now = now();
    let claims = json!({"iss": strict, "aud": AUDIENCE, "preferred_username": "bob",
                        "iat": now, "exp": now + 600});
    let token = s.issuer.mint(claims);
    let bob = "bob@mailserver.foo.com";
    let a = login("OAUTHBEARER", s.stack.submission, &s.dir, bob, &token);
    let json = assert_refused("OAUTHBEARER", &a);
    // Found by discovery: the error points the client at it.
    assert_eq!(
        json["openid-configuration"],
        format!("{strict}/.well-known/openid-configuration").as_str()
    );
    wait_log(
        &s.stack,
        "invalid bearer token: user not in credential-store",
    );
    s.stack
        .add_user("bob", "mailserver.foo.com", "bobs-password-1");
    // The negative cache entry is dropped by credential-store's announcement.
    let until = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let a = login("XOAUTH2", s.stack.submission, &s.dir, bob, &token);
        if a.logged_in {
            assert_logged_in("XOAUTH2", &a);
            break;
        }
        assert!(std::time::Instant::now() < until, "{}", a.transcript);
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_log(
        &s.stack,
        "AUTH=server, relay=[127.0.0.1], authid=bob@mailserver.foo.com, mech=XOAUTH2",
    );
    // The lenient issuer needs no local user: alice has none.
    let token = s.issuer.mint(s.issuer.claims(ALICE));
    let a = login("OAUTHBEARER", s.stack.submission, &s.dir, ALICE, &token);
    assert_logged_in("OAUTHBEARER", &a);
}

// ---------------------------------------------------------------- serve

#[test]
fn serve_all_in_one_accepts_a_token_and_refuses_an_expired_one() {
    let dir = scratch("oauth-serve");
    let issuer = Issuer::start(&dir);
    let sink = Sink::start(&dir);
    let (cert, key) = test_certificate(&dir, "mailserver.foo.com");
    let config = dir.join("serve.toml");
    let toml = format!(
        r#"
hostname = "mailserver.foo.com"
default_realm = "mailserver.foo.com"
data_dir = "{data}"

[relay_queue]
smarthost = "{sink}"

[frontend.tls]
cert = "{cert}"
key = "{key}"

[[frontend.listeners]]
address = "127.0.0.1:0"
role = "submission"
"#,
        data = dir.join("data").display(),
        sink = sink.addr,
        cert = cert.display(),
        key = key.display(),
    );
    std::fs::write(&config, merge_toml(&toml, &oauth_toml(&issuer))).unwrap();
    let mut cmd = Command::new(bin("authrelay"));
    cmd.arg("--config")
        .arg(&config)
        .arg("serve")
        .env("RUST_LOG", "info");
    let mut serve = Proc::spawn("authrelay serve", cmd, dir.join("serve.log"));
    let submission = serve.addr("smtp submission");
    let token = issuer.mint(issuer.claims(ALICE));
    let a = login("OAUTHBEARER", submission, &dir, ALICE, &token);
    assert_logged_in("OAUTHBEARER", &a);
    assert_eq!(sink.wait_messages(1, Duration::from_secs(30)).len(), 1);
    let mut expired = issuer.claims(ALICE);
    expired["exp"] = json!(now() - 3600);
    let token = issuer.mint(expired);
    let a = login("XOAUTH2", submission, &dir, ALICE, &token);
    assert_refused("XOAUTH2", &a);
    assert!(
        serve
            .log_text()
            .contains("invalid bearer token: token expired")
    );
    assert!(!serve.log_text().contains(&token));
    serve.signal("TERM");
    assert!(serve.wait_exit(Duration::from_secs(15)).is_some());
}
