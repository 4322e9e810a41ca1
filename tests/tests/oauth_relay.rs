//! relay-queue authenticating to its hub with OAuth2 (issue 21, part 1):
//! a real authorization server (Authlib in Flask, over HTTPS on loopback:
//! tests/support/token_endpoint.py) issues the tokens, and a real hub
//! (aiosmtpd: tests/support/oauth_hub.py) takes XOAUTH2/OAUTHBEARER only
//! after asking that server's RFC 7662 introspection whether the token is
//! live. Nothing in between is ours but the relay.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use authrelay_e2e::*;
use serde_json::{Value, json};

const PASSWORD: &str = "tanstaaf-Secret-42";
/// The relay's OAuth2 client secret; distinctive so a log grep cannot miss it.
const CLIENT_SECRET: &str = "cs-Zq81-Vx7-client-secret";
const INTROSPECT_SECRET: &str = "hub-introspect-Kk29";
const HUB_PASSWORD: &str = "hub-Pw-plain-55xr";

fn require_python_modules() {
    let ok = Command::new("python3")
        .args(["-c", "import authlib, flask, aiosmtpd"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "these tests need Python's authlib, flask and aiosmtpd: `pip install authlib flask aiosmtpd` (scripts/test.sh installs them)"
    );
}

/// A certificate for 127.0.0.1 and localhost that is also the CA the relay
/// trusts for the token endpoint.
fn loopback_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let made =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let cert = dir.join("endpoint-cert.pem");
    let key = dir.join("endpoint-key.pem");
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

struct Endpoint {
    proc: Proc,
    port: u16,
    ca: PathBuf,
}

/// The authorization server on `port` (0: any). Clients: `relay`
/// (client credentials, Basic), `gw` (refresh token, secret in the form
/// body), `hub` (introspection).
fn start_endpoint(dir: &Path, port: u16, expires_in: u64) -> Endpoint {
    let cert = dir.join("endpoint-cert.pem");
    let key = dir.join("endpoint-key.pem");
    let clients = json!([
        {"id": "relay", "secret_env": "RELAY_SECRET", "grants": ["client_credentials"]},
        {"id": "gw", "secret_env": "RELAY_SECRET", "auth_method": "client_secret_post",
         "grants": ["refresh_token"]},
        {"id": "hub", "secret_env": "HUB_INTROSPECT_SECRET", "grants": []},
    ]);
    let mut cmd = Command::new("python3");
    cmd.arg(support("token_endpoint.py"))
        .args([
            "--port",
            &port.to_string(),
            "--expires-in",
            &expires_in.to_string(),
        ])
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .env("OAUTH_CLIENTS", clients.to_string())
        .env("RELAY_SECRET", CLIENT_SECRET)
        .env("HUB_INTROSPECT_SECRET", INTROSPECT_SECRET);
    let mut proc = Proc::spawn("token endpoint", cmd, dir.join("endpoint.log"));
    let line = proc.wait_line("token endpoint listening on");
    let port = line.rsplit(':').next().unwrap().parse().unwrap();
    Endpoint {
        proc,
        port,
        ca: cert,
    }
}

impl Endpoint {
    fn call(&self, method: &str, path: &str) -> Value {
        let out = Command::new("curl")
            .args(["-sS", "--fail", "-X", method, "--cacert"])
            .arg(&self.ca)
            .arg(format!("https://127.0.0.1:{}{path}", self.port))
            .output()
            .expect("curl must be installed (scripts/test.sh installs it)");
        assert!(
            out.status.success(),
            "{method} {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn state(&self) -> Value {
        self.call("GET", "/_test/state")
    }

    fn issued(&self) -> u64 {
        self.state()["issued"].as_u64().unwrap()
    }
}

struct Hub {
    _proc: Proc,
    addr: std::net::SocketAddr,
    out: PathBuf,
}

/// The aiosmtpd hub; `only` limits the bearer mechanisms it offers.
fn start_hub(dir: &Path, name: &str, endpoint_port: u16, only: Option<&str>) -> Hub {
    start_hub_with(dir, name, endpoint_port, only, &[])
}

fn start_hub_with(
    dir: &Path,
    name: &str,
    endpoint_port: u16,
    only: Option<&str>,
    extra: &[&str],
) -> Hub {
    let out = dir.join(name);
    let mut cmd = Command::new("python3");
    cmd.arg(support("oauth_hub.py"))
        .arg(&out)
        .arg("--cert")
        .arg(dir.join("endpoint-cert.pem"))
        .arg("--key")
        .arg(dir.join("endpoint-key.pem"))
        .arg("--ca")
        .arg(dir.join("endpoint-cert.pem"))
        .args([
            "--introspect",
            &format!("https://127.0.0.1:{endpoint_port}/introspect"),
            "--user",
            "mailrelay",
        ])
        .env("HUB_INTROSPECT_SECRET", INTROSPECT_SECRET)
        .env("HUB_PASSWORD", HUB_PASSWORD);
    if let Some(only) = only {
        cmd.args(["--only", only]);
    }
    cmd.args(extra);
    let mut proc = Proc::spawn(name, cmd, dir.join(format!("{name}.log")));
    let line = proc.wait_line("hub listening on");
    Hub {
        _proc: proc,
        addr: line.rsplit(' ').next().unwrap().parse().unwrap(),
        out,
    }
}

impl Hub {
    fn messages(&self) -> Vec<Value> {
        std::fs::read_dir(&self.out)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                    .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every AUTH attempt the hub saw, in order.
    fn auths(&self) -> Vec<Value> {
        std::fs::read_to_string(self.out.join("auth.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The relay's token sources and its AuthInfo entry for the hub (at
/// 127.0.0.1), naming `source`.
fn oauth_toml(dir: &Path, endpoint_port: u16, source: &str) -> String {
    let secret = dir.join("client-secret");
    std::fs::write(&secret, format!("{CLIENT_SECRET}\n")).unwrap();
    format!(
        r#"
[relay_queue]
tls = "required"

[relay_queue.token_sources.hub]
grant = "client-credentials"
token_url = "https://127.0.0.1:{endpoint_port}/token"
client_id = "relay"
client_secret_file = "{secret}"
scope = "smtp"
ca_file = "{ca}"

[relay_queue.token_sources.gw]
grant = "refresh-token"
token_url = "https://127.0.0.1:{endpoint_port}/token"
client_id = "gw"
client_secret_file = "{secret}"
client_auth = "post"
ca_file = "{ca}"

[[relay_queue.authinfo]]
host = "127.0.0.1"
user = "relay@hub.example"
token_source = "{source}"
"#,
        secret = secret.display(),
        ca = dir.join("endpoint-cert.pem").display(),
    )
}

fn relay_stack(dir: &Path, redis: &Redis, hub: std::net::SocketAddr, extra: String) -> Stack {
    relay_stack_env(dir, redis, hub, extra, Vec::new())
}

fn relay_stack_env(
    dir: &Path,
    redis: &Redis,
    hub: std::net::SocketAddr,
    extra: String,
    env: Vec<(String, String)>,
) -> Stack {
    let stack = Stack::start(
        dir,
        redis,
        StackOptions {
            hostname: "mailrelay.foo.com".into(),
            smarthost: Some(hub),
            extra_toml: extra,
            env,
            ..Default::default()
        },
    );
    stack.add_user("test", "mailserver.foo.com", PASSWORD);
    stack
}

fn submit(stack: &Stack, to: &str) {
    let res = smtplib(
        json!({"port": stack.submission.port(), "starttls": true, "mech": "PLAIN",
               "user": "test@mailserver.foo.com", "from": "test@mailserver.foo.com",
               "to": [to], "body": format!("Subject: to {to}\r\n\r\nhello\r\n")}),
        PASSWORD,
    );
    assert_eq!(res["auth"][0], 235, "{res}");
    assert_eq!(res["send"]["ok"], true, "{res}");
}

fn deliver(stack: &Stack, hub: &Hub, to: &str) {
    let before = hub.messages().len();
    submit(stack, to);
    wait_for(
        &format!("delivery to {to}"),
        Duration::from_secs(60),
        || hub.messages().len() > before,
    );
}

/// Neither a token the endpoint issued, nor a refresh token, nor the
/// client secret, in any log of the relay.
fn assert_no_secret_in(logs: &str, endpoint: &Endpoint) {
    assert!(!logs.contains(CLIENT_SECRET), "client secret in the logs");
    let state = endpoint.state();
    let mut n = 0;
    for kind in ["access_tokens", "refresh_tokens"] {
        for t in state[kind].as_array().unwrap() {
            let t = t.as_str().unwrap();
            assert!(!logs.contains(t), "a token from {kind} is in the logs");
            n += 1;
        }
    }
    assert!(n > 0, "the endpoint issued no token to look for");
}

fn setup(name: &str, expires_in: u64, only: Option<&str>) -> (PathBuf, Redis, Endpoint, Hub) {
    require_python_modules();
    let dir = scratch(name);
    let redis = Redis::start(&dir);
    loopback_certificate(&dir);
    let endpoint = start_endpoint(&dir, 0, expires_in);
    let hub = start_hub(&dir, "hub", endpoint.port, only);
    (dir, redis, endpoint, hub)
}

#[test]
fn client_credentials_token_relays_the_mail_and_is_fetched_once_for_many_deliveries() {
    let (dir, redis, endpoint, hub) = setup("relay-oauth-cc", 3600, None);
    let receiver = authrelay_e2e::otlp::Receiver::start();
    // Every log line relay-queue and the libraries on the token's way
    // (reqwest, hyper, rustls) can write, for the grep at the end.
    let stack = relay_stack_env(
        &dir,
        &redis,
        hub.addr,
        oauth_toml(&dir, endpoint.port, "hub"),
        vec![
            (
                "RUST_LOG".into(),
                "info,relay_queue=trace,reqwest=trace,hyper=trace,hyper_util=trace,rustls=trace"
                    .into(),
            ),
            // And every span, exported to a collector.
            ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), receiver.endpoint()),
            ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
        ],
    );
    for i in 0..3 {
        deliver(&stack, &hub, &format!("friend{i}@outside.example"));
    }
    assert_eq!(endpoint.issued(), 1, "one token for three deliveries");
    let auths = hub.auths();
    assert_eq!(auths.len(), 3, "{auths:?}");
    for a in &auths {
        // The hub offers both; OAUTHBEARER is the standard one.
        assert_eq!(a["mech"], "OAUTHBEARER", "{a}");
        assert_eq!(a["ok"], true, "{a}");
        assert_eq!(a["user"], "relay@hub.example", "{a}");
        assert_eq!(
            a["token_sha"], auths[0]["token_sha"],
            "the same cached token"
        );
    }
    for m in hub.messages() {
        assert_eq!(m["auth"], "OAUTHBEARER:relay@hub.example", "{m}");
    }
    let log = stack.queue.log_text();
    assert!(
        log.contains("AUTH=client, relay=127.0.0.1, mech=OAUTHBEARER"),
        "{log}"
    );
    assert_no_secret_in(&stack.logs(), &endpoint);
    wait_for("the AUTH client spans", Duration::from_secs(30), || {
        receiver
            .spans()
            .iter()
            .filter(|s| s.span.name == "smtp AUTH client")
            .filter(|s| s.attr("sasl.mechanism").as_deref() == Some("OAUTHBEARER"))
            .count()
            >= 3
    });
    assert_no_secret_in(&receiver.dump(), &endpoint);
}

#[test]
fn concurrent_deliveries_share_one_token_fetch() {
    let (dir, redis, endpoint, hub) = setup("relay-oauth-single-flight", 3600, None);
    let stack = relay_stack(
        &dir,
        &redis,
        hub.addr,
        oauth_toml(&dir, endpoint.port, "hub"),
    );
    // Eight submissions at once: eight deliveries start together on an
    // empty cache.
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let port = stack.submission.port();
            std::thread::spawn(move || {
                smtplib(
                    json!({"port": port, "starttls": true, "mech": "PLAIN",
                           "user": "test@mailserver.foo.com", "from": "test@mailserver.foo.com",
                           "to": [format!("p{i}@outside.example")], "body": "Subject: p\r\n\r\np\r\n"}),
                    PASSWORD,
                )
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap()["send"]["ok"], true);
    }
    wait_for("eight deliveries", Duration::from_secs(60), || {
        hub.messages().len() >= 8
    });
    assert_eq!(endpoint.issued(), 1, "single flight: one fetch");
}

#[test]
fn a_short_lived_token_is_renewed_before_it_expires() {
    let (dir, redis, endpoint, hub) = setup("relay-oauth-renew", 6, None);
    let stack = relay_stack(
        &dir,
        &redis,
        hub.addr,
        oauth_toml(&dir, endpoint.port, "hub"),
    );
    deliver(&stack, &hub, "a@outside.example");
    assert_eq!(endpoint.issued(), 1);
    // In the token's last fifth (6 s lifetime: renewed after 4.8 s) the
    // next delivery fetches a new one instead of sending one about to die.
    std::thread::sleep(Duration::from_millis(5000));
    deliver(&stack, &hub, "b@outside.example");
    assert_eq!(endpoint.issued(), 2);
    let auths = hub.auths();
    assert!(
        auths.iter().all(|a| a["ok"] == true),
        "the hub never saw a dead token: {auths:?}"
    );
    assert_ne!(auths[0]["token_sha"], auths[1]["token_sha"]);
}

#[test]
fn a_token_the_hub_refuses_is_fetched_anew_and_auth_retried_once() {
    let (dir, redis, endpoint, hub) = setup("relay-oauth-refused", 3600, Some("XOAUTH2"));
    let mut stack = relay_stack(
        &dir,
        &redis,
        hub.addr,
        oauth_toml(&dir, endpoint.port, "hub"),
    );
    // OAUTHBEARER's round trip too, against a second hub offering only it,
    // and a third that refuses with a bare 535 as Microsoft 365 does.
    let hub2 = start_hub(&dir, "hub2", endpoint.port, Some("OAUTHBEARER"));
    let hub3 = start_hub_with(
        &dir,
        "hub3",
        endpoint.port,
        Some("XOAUTH2"),
        &["--no-error-json"],
    );
    let rounds = [
        (&hub, "XOAUTH2", Some("")),
        (&hub2, "OAUTHBEARER", Some("AQ==")),
        (&hub3, "XOAUTH2", None),
    ];
    for (round, (hub, mech, dummy)) in rounds.into_iter().enumerate() {
        if round > 0 {
            stack
                .endpoints
                .retain(|(k, _)| k != "AUTHRELAY__RELAY_QUEUE__SMARTHOST");
            stack.endpoints.push((
                "AUTHRELAY__RELAY_QUEUE__SMARTHOST".into(),
                hub.addr.to_string(),
            ));
            stack.restart_queue();
        }
        let issued = endpoint.issued();
        deliver(&stack, hub, &format!("first-{mech}@outside.example"));
        // The issuer revokes every token so far (as after a password reset):
        // the relay's cached one is now dead.
        endpoint.call("POST", "/_test/revoke_access");
        deliver(&stack, hub, &format!("second-{mech}@outside.example"));
        let auths = hub.auths();
        let tried: Vec<_> = auths.iter().filter(|a| a.get("ok").is_some()).collect();
        assert_eq!(tried.len(), 3, "{auths:?}");
        assert_eq!(
            (&tried[0]["ok"], &tried[1]["ok"], &tried[2]["ok"]),
            (&json!(true), &json!(false), &json!(true)),
            "{auths:?}"
        );
        assert!(tried.iter().all(|a| a["mech"] == mech), "{auths:?}");
        // The error round trip as the mechanism says: XOAUTH2's empty
        // answer, OAUTHBEARER's %x01 (RFC 7628 §3.2.3), base64 on the wire
        // (aiosmtpd decodes it: "" and "\u0001"); none without the JSON.
        let answered: Vec<_> = auths.iter().filter_map(|a| a.get("error_reply")).collect();
        let expected: Vec<Value> = dummy
            .map(|d| {
                let raw = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, d);
                json!(String::from_utf8(raw.unwrap()).unwrap())
            })
            .into_iter()
            .collect();
        assert_eq!(answered, expected.iter().collect::<Vec<_>>(), "{auths:?}");
        assert_eq!(tried[1]["token_sha"], tried[0]["token_sha"]);
        assert_ne!(tried[2]["token_sha"], tried[1]["token_sha"]);
        assert_eq!(endpoint.issued(), issued + 2);
        let log = stack.queue.log_text();
        assert!(
            log.contains(&format!(
                "mech={mech}, token_source=hub, token refused (535"
            )),
            "{log}"
        );
        assert!(!log.contains("stat=Deferred"), "retried at once: {log}");
    }
    assert_no_secret_in(&stack.logs(), &endpoint);
}

#[test]
fn token_endpoint_down_defers_the_mail_until_it_is_back() {
    require_python_modules();
    let dir = scratch("relay-oauth-down");
    let redis = Redis::start(&dir);
    loopback_certificate(&dir);
    // The endpoint's port, with nothing listening yet.
    let port = free_port();
    let hub = start_hub(&dir, "hub", port, None);
    let stack = relay_stack(&dir, &redis, hub.addr, oauth_toml(&dir, port, "hub"));
    submit(&stack, "waits@outside.example");
    wait_for("a deferral", Duration::from_secs(30), || {
        stack.queue.log_text().contains("stat=Deferred")
    });
    let log = stack.queue.log_text();
    assert!(
        log.contains("token_source=hub, no token: token endpoint unavailable"),
        "{log}"
    );
    let (ok, out, err) = stack.authrelay(&["queue", "list", "--json"], "");
    assert!(ok, "{err}");
    assert!(out.contains("waits@outside.example"), "still queued: {out}");
    assert!(hub.messages().is_empty());
    assert!(hub.auths().is_empty(), "no AUTH without a token");
    // The endpoint comes up; the next retry (1-2 s here) delivers.
    let endpoint = start_endpoint(&dir, port, 3600);
    wait_for(
        "delivery after the endpoint is back",
        Duration::from_secs(30),
        || !hub.messages().is_empty(),
    );
    assert_eq!(endpoint.issued(), 1);
    assert_no_secret_in(&stack.logs(), &endpoint);
    drop(endpoint.proc);
}

/// Every file under `dir`, as bytes.
fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().filter_map(|e| e.ok()) {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                out.push((p, bytes));
            }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn a_rotated_refresh_token_is_stored_sealed_and_used_after_a_restart() {
    use std::os::unix::fs::PermissionsExt as _;
    let (dir, redis, endpoint, hub) = setup("relay-oauth-refresh", 3600, None);
    let mut stack = relay_stack(
        &dir,
        &redis,
        hub.addr,
        oauth_toml(&dir, endpoint.port, "gw"),
    );
    assert!(
        stack
            .queue
            .log_text()
            .contains("token_source=gw: no refresh token stored yet"),
        "{}",
        stack.queue.log_text()
    );
    let check = |needle: &str| {
        let (ok, out, err) = stack.authrelay(&["config", "check"], "");
        assert!(ok, "{err}");
        assert!(out.contains(needle), "{needle}:\n{out}");
    };
    check("gw: refresh-token (NO refresh token stored");
    // As if a user consented once: the first refresh token, given to the
    // operator, stored with the admin command (stdin, not argv).
    let first = endpoint.call("POST", "/_test/seed?client=gw")["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (ok, out, err) = stack.authrelay(
        &["authinfo", "token", "set", "127.0.0.1"],
        &format!("{first}\n"),
    );
    assert!(ok, "{out} {err}");
    assert!(
        out.contains("refresh token for token source gw stored sealed"),
        "{out}"
    );
    check("gw: refresh-token (refresh token stored)");
    let file = dir.join("data/oauth/gw.token");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(file.parent().unwrap()), 0o700);

    deliver(&stack, &hub, "one@outside.example");
    let state = endpoint.state();
    assert_eq!(state["by_grant"]["refresh_token"], 1);
    let rotated: Vec<String> = state["refresh_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .filter(|t| *t != first)
        .collect();
    assert_eq!(rotated.len(), 1, "the endpoint rotated the refresh token");
    assert!(
        stack
            .queue
            .log_text()
            .contains("token_source=gw, rotated refresh token stored"),
        "{}",
        stack.queue.log_text()
    );
    assert_eq!(mode(&file), 0o600, "still 0600 after the rewrite");
    // Neither refresh token in the clear anywhere under the data directory.
    for (path, bytes) in files_under(&dir.join("data")) {
        for t in [&first, &rotated[0]] {
            assert!(
                !contains(&bytes, t),
                "refresh token in clear in {}",
                path.display()
            );
        }
    }
    // A new relay-queue process holds no token: it must refresh with the
    // rotated token from disk (the first one is revoked now).
    stack.restart_queue();
    deliver(&stack, &hub, "two@outside.example");
    let state = endpoint.state();
    assert_eq!(state["by_grant"]["refresh_token"], 2, "{state}");
    assert!(
        hub.auths().iter().all(|a| a["ok"] == true),
        "{:?}",
        hub.auths()
    );
    assert_no_secret_in(&stack.logs(), &endpoint);
}

#[test]
fn authinfo_test_exits_zero_when_the_hub_accepts_and_non_zero_with_its_reply_when_not() {
    let (dir, redis, endpoint, hub) = setup("relay-oauth-cli-test", 3600, Some("XOAUTH2"));
    let stack = relay_stack(
        &dir,
        &redis,
        hub.addr,
        oauth_toml(&dir, endpoint.port, "hub"),
    );
    let (ok, out, err) = stack.authrelay(&["authinfo", "test", "127.0.0.1"], "");
    assert!(ok, "{out} {err}");
    assert!(
        out.contains(&format!(
            "AUTH=client, relay=127.0.0.1:{}, tls=yes, mech=XOAUTH2: authenticated with token source hub",
            hub.addr.port()
        )),
        "{out}"
    );
    assert!(hub.messages().is_empty(), "a test sends no mail");

    // A wrong client secret: the token endpoint's refusal, non-zero.
    std::fs::write(dir.join("client-secret"), "not-the-secret\n").unwrap();
    let (ok, out, err) = stack.authrelay(&["authinfo", "test", "127.0.0.1"], "");
    assert!(!ok, "{out}");
    assert!(err.contains("invalid_client"), "{err}");
    std::fs::write(dir.join("client-secret"), format!("{CLIENT_SECRET}\n")).unwrap();

    // A token the hub refuses twice (revoked as soon as issued is not
    // possible here; a hub offering no bearer mechanism shows the
    // other failure): the hub's offer in the message, non-zero.
    let plain_only = start_hub(&dir, "plainhub", endpoint.port, Some("NONE"));
    let (ok, _, err) = stack.authrelay(
        &[
            "authinfo",
            "test",
            &format!("127.0.0.1:{}", plain_only.addr.port()),
        ],
        "",
    );
    assert!(!ok);
    assert!(err.contains("offered: LOGIN PLAIN"), "{err}");

    // A password entry works the same way: success, then the hub's 535.
    let authinfo = dir.join("authinfo");
    for (password, expect_ok) in [(HUB_PASSWORD, true), ("wrong-Password-1", false)] {
        std::fs::write(
            &authinfo,
            format!("AuthInfo:localhost \"U:mailrelay\" \"P:{password}\" \"M:PLAIN\"\n"),
        )
        .unwrap();
        let mut env = stack.endpoints.clone();
        env.push((
            "AUTHRELAY__RELAY_QUEUE__AUTHINFO_FILE".into(),
            authinfo.display().to_string(),
        ));
        let (ok, out, err) = run_authrelay(
            &stack.config,
            &env,
            &[
                "authinfo",
                "test",
                &format!("localhost:{}", plain_only.addr.port()),
            ],
            "",
        );
        assert_eq!(ok, expect_ok, "{out} {err}");
        if expect_ok {
            assert!(
                out.contains("mech=PLAIN: authenticated with password"),
                "{out}"
            );
        } else {
            assert!(err.contains("535"), "{err}");
            assert!(!err.contains(password));
        }
    }
}
