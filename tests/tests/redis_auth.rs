//! Redis that requires authentication, as the Kubernetes manifests run it:
//! `user default off` and an ACL user confined to authrelay's key prefix
//! and channels (the ACL k8s/base/redis.yaml writes, made by its script). The services log in
//! with `redis.username` and `redis.password_file`; wrong credentials stop
//! a start with an error that names the settings, never the password, and
//! credentials Redis stops accepting later fail AUTH closed (454) until
//! they work again — no restart.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use authrelay_e2e::*;
use authrelay_sasl::Mechanism;

const PASSWORD: &str = "redis-auth-Secret-5";
const USER: &str = "test@mailserver.foo.com";
/// The Redis password: it must never show up in a log or an error.
const REDIS_PASSWORD: &str = "Redis-Pa55-never-in-a-log-7f3a";
const WRONG_PASSWORD: &str = "Wrong-Pa55-never-in-a-log-91c2";
/// Test-only administrator, to change authrelay's password under the stack.
const ADMIN_PASSWORD: &str = "admin-of-this-test-only";

/// The ACL k8s/base/redis.yaml gives Redis, made by that manifest's own
/// start-up script from a password file, plus an administrator for the
/// test: the rule tested here is the rule shipped.
fn aclfile(dir: &Path) -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../k8s/base/redis.yaml");
    let yaml = std::fs::read_to_string(&manifest).unwrap();
    // The script up to (not including) the `exec redis-server`.
    let script: Vec<&str> = yaml
        .lines()
        .skip_while(|l| l.trim() != "set -eu")
        .take_while(|l| !l.contains("exec redis-server"))
        .map(str::trim_start)
        .collect();
    assert!(
        script.iter().any(|l| l.contains("users.acl")),
        "no ACL script in {}",
        manifest.display()
    );
    let secrets = dir.join("secrets");
    let acl_dir = dir.join("redis-acl");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::create_dir_all(&acl_dir).unwrap();
    secret_file(&secrets, "password", REDIS_PASSWORD);
    let script = script
        .join("\n")
        .replace("/run/secrets/redis-auth", &secrets.display().to_string())
        .replace("/run/redis-acl", &acl_dir.display().to_string());
    let out = Command::new("sh").arg("-c").arg(&script).output().unwrap();
    assert!(out.status.success(), "{script}: {out:?}");
    let path = acl_dir.join("users.acl");
    let mut acl = std::fs::read_to_string(&path).unwrap();
    assert!(acl.starts_with("user default off\n"), "{acl}");
    assert!(!acl.contains(REDIS_PASSWORD), "{acl}");
    acl.push_str(&format!("user admin on >{ADMIN_PASSWORD} ~* &* +@all\n"));
    std::fs::write(&path, acl).unwrap();
    path
}

fn secret_file(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{content}\n")).unwrap();
    path
}

/// `redis-cli` as `user` (the password through the environment, not argv).
fn redis_cli(redis: &Redis, user: Option<(&str, &str)>, args: &[&str]) -> String {
    let mut cmd = Command::new("redis-cli");
    cmd.args(["-p", &redis.port.to_string()]);
    if let Some((user, password)) = user {
        cmd.args(["--user", user]).env("REDISCLI_AUTH", password);
    }
    let out = cmd
        .args(args)
        .output()
        .expect("redis-cli (installed with redis-server)");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn auth_once(addr: std::net::SocketAddr) -> u16 {
    let mut c = Raw::connect(addr);
    assert_eq!(c.cmd("EHLO client.example").0, 250);
    let code = auth_raw(&mut c, Mechanism::ScramSha256, USER, PASSWORD);
    let _ = c.cmd("QUIT");
    code
}

fn send_one(addr: std::net::SocketAddr, subject: &str) -> u16 {
    let mut c = Raw::connect(addr);
    c.cmd("EHLO client.example");
    let code = auth_raw(&mut c, Mechanism::ScramSha256, USER, PASSWORD);
    assert_eq!(code, 235, "AUTH");
    assert_eq!(c.cmd(&format!("MAIL FROM:<{USER}>")).0, 250);
    assert_eq!(c.cmd("RCPT TO:<friend@outside.example>").0, 250);
    assert_eq!(c.cmd("DATA").0, 354);
    c.write(format!("Subject: {subject}\r\n\r\nhello\r\n.\r\n").as_bytes());
    let (code, _) = c.read();
    let _ = c.cmd("QUIT");
    code
}

fn assert_no_password(what: &str, text: &str) {
    for secret in [REDIS_PASSWORD, WRONG_PASSWORD] {
        assert!(
            !text.contains(secret),
            "{what} shows a Redis password:\n{text}"
        );
    }
}

#[test]
fn services_log_in_to_a_redis_that_requires_a_password_and_refuse_a_wrong_one() {
    let dir = scratch("redis-auth");
    let acl = aclfile(&dir);
    let redis = Redis::start_with_aclfile(&dir, &acl);
    // Nothing gets in without credentials.
    let anonymous = redis_cli(&redis, None, &["SET", "authrelay:x", "1"]);
    assert!(anonymous.contains("NOAUTH"), "{anonymous}");

    let right = secret_file(&dir, "redis-password", REDIS_PASSWORD);
    let wrong = secret_file(&dir, "wrong-password", WRONG_PASSWORD);
    let sink = Sink::start(&dir);
    let stack = Stack::start(
        &dir,
        &redis,
        StackOptions {
            smarthost: Some(sink.addr),
            extra_toml: format!(
                "[redis]\nusername = \"authrelay\"\npassword_file = \"{}\"\n",
                right.display()
            ),
            ..Default::default()
        },
    );
    stack.add_user("test", "mailserver.foo.com", PASSWORD);

    // AUTH (SCRAM: the exchange claims and brute-force counters in Redis)
    // and a relayed message, through all four services.
    assert_eq!(
        send_one(stack.submission, "through an authenticated Redis"),
        250
    );
    let got = sink.wait_messages(1, Duration::from_secs(30));
    assert_eq!(got.len(), 1, "{}", stack.logs());
    // The services did write to Redis, under their prefix, as `authrelay`.
    let keys = redis_cli(&redis, Some(("admin", ADMIN_PASSWORD)), &["--scan"]);
    assert!(
        keys.lines().any(|k| k.starts_with("authrelay:")),
        "no authrelay keys in Redis: {keys:?}"
    );
    assert!(
        keys.lines().all(|k| k.starts_with("authrelay:")),
        "{keys:?}"
    );
    // Pub/sub logs in too: sasl-auth listens to the credential change feed.
    let channels = redis_cli(
        &redis,
        Some(("admin", ADMIN_PASSWORD)),
        &["PUBSUB", "CHANNELS"],
    );
    assert!(channels.contains("authrelay:creds:changed"), "{channels:?}");

    // A wrong password stops the start of every service that uses Redis
    // (relay-queue does not), and of `authrelay serve`, with a clear error.
    let env = |extra: &[(&str, String)]| {
        let mut env = stack.endpoints.clone();
        env.push((
            "AUTHRELAY__REDIS__PASSWORD_FILE".into(),
            wrong.display().to_string(),
        ));
        env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        env
    };
    std::fs::create_dir_all(dir.join("wrong")).unwrap();
    for name in [
        "smtp-frontend",
        "sasl-auth",
        "credential-store",
        "authrelay serve",
    ] {
        let mut proc = if name == "authrelay serve" {
            let mut cmd = Command::new(bin("authrelay"));
            cmd.arg("--config")
                .arg(&stack.config)
                .arg("serve")
                .env("RUST_LOG", "info")
                .envs(env(&[(
                    "AUTHRELAY__DATA_DIR",
                    dir.join("serve-data").display().to_string(),
                )]));
            Proc::spawn(name, cmd, dir.join("serve-wrong.log"))
        } else {
            spawn_service(
                name,
                &stack.config,
                &dir.join("wrong"),
                &env(&[("RUST_LOG", "info".into())]),
            )
        };
        let status = proc.wait_exit(Duration::from_secs(20));
        let log = proc.log_text();
        assert!(
            status.is_some_and(|s| !s.success()),
            "{name} started with a wrong Redis password: {log}"
        );
        assert!(
            log.contains("Redis refused authrelay's credentials")
                && log.contains("user `authrelay`")
                && log.contains("redis.password_file"),
            "{name}: {log}"
        );
        assert_no_password(name, &log);
    }

    // No credentials at all: Redis says NOAUTH, and the error says what to set.
    let text = std::fs::read_to_string(&stack.config).unwrap();
    let anonymous: String = text
        .lines()
        .filter(|l| !l.starts_with("username = \"authrelay\"") && !l.starts_with("password_file ="))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(anonymous, text);
    let config = dir.join("anonymous.toml");
    std::fs::write(&config, anonymous).unwrap();
    let mut sasl = spawn_service("sasl-auth", &config, &dir.join("wrong"), &stack.endpoints);
    let status = sasl.wait_exit(Duration::from_secs(20));
    let log = sasl.log_text();
    assert!(status.is_some_and(|s| !s.success()), "{log}");
    assert!(
        log.contains("NOAUTH") && log.contains("set redis.password_file"),
        "{log}"
    );

    // `authrelay serve` with the right credentials starts and reaches Redis.
    let mut cmd = Command::new(bin("authrelay"));
    cmd.arg("--config")
        .arg(&stack.config)
        .arg("serve")
        .env("RUST_LOG", "info")
        .envs(stack.endpoints.clone())
        .env("AUTHRELAY__DATA_DIR", dir.join("serve-data"));
    let mut serve = Proc::spawn("authrelay serve", cmd, dir.join("serve.log"));
    serve.wait_line("(smtp submission)");
    assert!(
        !serve.log_text().contains("not reachable"),
        "{}",
        serve.log_text()
    );
    serve.kill();

    assert_no_password("the stack's logs", &stack.logs());
}

/// sasl-auth's readiness (`grpc.health.v1`, what a probe reads), which
/// follows Redis.
fn sasl_auth_serving(stack: &Stack) -> bool {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let url = stack.endpoint("AUTHRELAY__ENDPOINTS__SASL_AUTH");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let ch = tonic::transport::Endpoint::from_shared(url)
            .unwrap()
            .connect_lazy();
        let status = HealthClient::new(ch)
            .check(HealthCheckRequest {
                service: "authrelay.sasl.v1.SaslAuth".into(),
            })
            .await
            .expect("sasl-auth answers health checks")
            .into_inner()
            .status();
        status == ServingStatus::Serving
    })
}

/// Poll `f` until it holds, for up to 30 s.
fn eventually(what: &str, stack: &Stack, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "{what}: {}", stack.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn credentials_redis_stops_accepting_fail_auth_closed_until_they_work_again() {
    let dir = scratch("redis-auth-rotate");
    let acl = aclfile(&dir);
    let redis = Redis::start_with_aclfile(&dir, &acl);
    let right = secret_file(&dir, "redis-password", REDIS_PASSWORD);
    let stack = Stack::start(
        &dir,
        &redis,
        StackOptions {
            extra_toml: format!(
                "[redis]\nusername = \"authrelay\"\npassword_file = \"{}\"\n",
                right.display()
            ),
            ..Default::default()
        },
    );
    stack.add_user("test", "mailserver.foo.com", PASSWORD);
    assert_eq!(auth_once(stack.submission), 235);
    eventually("sasl-auth not ready", &stack, || sasl_auth_serving(&stack));

    // The operator changes the password in Redis and drops the sessions
    // before the services have the new one.
    let admin = Some(("admin", ADMIN_PASSWORD));
    let set = format!(">{WRONG_PASSWORD}");
    let out = redis_cli(
        &redis,
        admin,
        &["ACL", "SETUSER", "authrelay", "resetpass", &set],
    );
    assert!(out.contains("OK"), "{out}");
    let out = redis_cli(&redis, admin, &["CLIENT", "KILL", "USER", "authrelay"]);
    assert!(out.trim().parse::<u32>().is_ok_and(|n| n > 0), "{out}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let code = auth_once(stack.submission);
        if code == 454 {
            break;
        }
        assert_eq!(code, 235, "while Redis refuses the credentials");
        assert!(Instant::now() < deadline, "AUTH never failed closed");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Not only the dropped connection: the reconnect is refused, and AUTH
    // stays 454 (never 235, never open) for as long as that lasts.
    while !stack.logs().contains("Password authentication failed") {
        assert!(
            Instant::now() < deadline,
            "no refused login in the logs: {}",
            stack.logs()
        );
        assert_eq!(auth_once(stack.submission), 454);
        std::thread::sleep(Duration::from_millis(200));
    }
    for _ in 0..3 {
        assert_eq!(auth_once(stack.submission), 454);
    }
    eventually("sasl-auth stays ready", &stack, || {
        !sasl_auth_serving(&stack)
    });
    // Redis takes the password again: AUTH works without a restart.
    let set = format!(">{REDIS_PASSWORD}");
    let out = redis_cli(
        &redis,
        admin,
        &["ACL", "SETUSER", "authrelay", "resetpass", &set],
    );
    assert!(out.contains("OK"), "{out}");
    eventually("AUTH did not recover", &stack, || {
        auth_once(stack.submission) == 235
    });
    eventually("sasl-auth not ready again", &stack, || {
        sasl_auth_serving(&stack)
    });
    assert_no_password("the stack's logs", &stack.logs());
}
