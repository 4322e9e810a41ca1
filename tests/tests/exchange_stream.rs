//! The frontend's AUTH steps ride sasl-auth's long-lived `Exchange`
//! streams (authrelay_grpc_tls::exchange): a few streams per replica carry
//! every Start and Step; a stream outlives the per-call deadline; and a
//! sasl-auth replica that shuts down under load costs no client an AUTH,
//! with Python's smtplib logging in all the while.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use authrelay_e2e::*;
use serde_json::json;

const PASSWORD: &str = "tanstaaf-Secret-42";
const USER: &str = "test@mailserver.foo.com";

fn stack(name: &str) -> (std::path::PathBuf, Redis, Stack) {
    let dir = scratch(name);
    let redis = Redis::start(&dir);
    let stack = Stack::start(
        &dir,
        &redis,
        StackOptions {
            // A short per-call deadline, which the streams must outlive.
            extra_toml: "[sasl]\nrealms = \"mailserver.foo.com\"\n\n\
                         [sasl.limits]\nmax_failures_per_ip = 0\nmax_failures_per_user = 0\n\n\
                         [endpoints]\ntimeout = \"2s\"\n\n\
                         [telemetry]\nmetrics_listen = \"127.0.0.1:0\"\n"
                .into(),
            ..Default::default()
        },
    );
    stack.add_user("test", "mailserver.foo.com", PASSWORD);
    (dir, redis, stack)
}

/// The sum of a counter family's samples whose labels contain `labels`.
fn sum(metrics: &str, family: &str, labels: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{family}{{")) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn calls(metrics: &str, op: &str) -> f64 {
    sum(
        metrics,
        "authrelay_grpc_client_duration_seconds_count",
        &format!("operation=\"{op}\""),
    )
}

fn cram_login(port: u16) -> serde_json::Value {
    smtplib(
        json!({"port": port, "mech": "CRAM-MD5", "user": USER}),
        PASSWORD,
    )
}

#[test]
fn auth_steps_share_a_few_streams_that_outlive_the_call_deadline() {
    let (_dir, _redis, mut stack) = stack("exchange-streams");
    let metrics = stack.frontend.addr("metrics");
    for i in 0..6 {
        let res = cram_login(stack.relay.port());
        assert_eq!(res["auth"][0], 235, "CRAM-MD5 #{i}: {res}");
    }
    let m = http_get(metrics, "/metrics");
    // Each CRAM-MD5 is a Start and a Step, all answered…
    assert_eq!(calls(&m, "sasl-auth/Start"), 6.0, "{m}");
    assert_eq!(calls(&m, "sasl-auth/Step"), 6.0, "{m}");
    assert_eq!(
        sum(
            &m,
            "authrelay_grpc_client_duration_seconds_count",
            "status=\"OK\""
        ) - calls(&m, "sasl-auth/Exchange"),
        12.0,
        "{m}"
    );
    // …over at most one stream per lane, not a call each.
    let opened = calls(&m, "sasl-auth/Exchange");
    assert!(
        (1.0..=authrelay_grpc_tls::exchange::LANES as f64).contains(&opened),
        "{opened} streams opened for 12 calls\n{m}"
    );
    // Idle for longer than endpoints.timeout (2 s): the deadline bounds a
    // call, not the stream, which still carries the next login.
    std::thread::sleep(Duration::from_secs(3));
    let res = cram_login(stack.relay.port());
    assert_eq!(res["auth"][0], 235, "after idling: {res}");
    let m = http_get(metrics, "/metrics");
    assert_eq!(calls(&m, "sasl-auth/Start"), 7.0, "{m}");
    assert_eq!(
        calls(&m, "sasl-auth/Exchange"),
        opened,
        "a stream was cut\n{m}"
    );
}

/// What a replica has done: its secret lookups (one per CRAM-MD5 login).
fn lookups(replica: SocketAddr) -> f64 {
    sum(
        &http_get(replica, "/metrics"),
        "authrelay_auth_cache_lookups_total",
        "",
    )
}

#[test]
fn a_sasl_auth_replica_that_shuts_down_under_load_costs_no_client_an_auth() {
    let (_dir, _redis, stack) = stack("exchange-shutdown");
    let (mut second, second_grpc) = stack.spawn_sasl_replica("sasl-auth-2");
    let second_metrics = second.addr("metrics");
    let both = format!(
        "{},http://{second_grpc}",
        stack.endpoint("AUTHRELAY__ENDPOINTS__SASL_AUTH")
    );
    let (mut fe, _submission) = stack.spawn_frontend_env(
        "smtp-frontend-both",
        &[("AUTHRELAY__ENDPOINTS__SASL_AUTH".into(), both)],
    );
    let relay = fe.addr("smtp relay");
    let load = Command::new("python3")
        .arg(support("login_loop.py"))
        .arg(
            json!({"port": relay.port(), "mech": "CRAM-MD5", "user": USER,
                   "threads": 4, "seconds": 8})
            .to_string(),
        )
        .env("SMTP_PASSWORD", PASSWORD)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 (scripts/test.sh installs it)");
    // Both replicas take a share of the steps (per-request balancing)…
    let deadline = Instant::now() + Duration::from_secs(5);
    while lookups(second_metrics) < 5.0 {
        assert!(
            Instant::now() < deadline,
            "the second replica took no logins in 5 s\n{}",
            stack.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // …then it is told to stop, mid-load: it answers what it read, ends its
    // streams, and exits; the frontend sends what it left to the other.
    second.signal("TERM");
    let status = second.wait_exit(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "sasl-auth did not exit cleanly within 10 s of SIGTERM: {status:?}\n{}",
        second.log_text()
    );
    let out = load.wait_with_output().unwrap();
    let res: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("login_loop.py: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(res["failed"], 0, "logins failed: {res}\n{}", stack.logs());
    assert!(res["ok"].as_u64().unwrap() >= 20, "too few logins: {res}");
    // Logins went on after the replica left.
    let res = cram_login(relay.port());
    assert_eq!(res["auth"][0], 235, "{res}");
}

/// sasl-auth's side of the contract in proto/sasl.proto, seen from a
/// client that keeps its stream open: a request with neither Start nor
/// Step is answered MALFORMED; on SIGTERM the replica answers what it read,
/// ends the stream cleanly and exits, instead of waiting on the stream
/// (a frontend behind a Service address never lets go of it by itself).
#[test]
fn on_sigterm_sasl_auth_ends_its_streams_cleanly_and_exits() {
    use authrelay_proto::sasl::v1 as pb;
    use authrelay_proto::sasl::v1::sasl_auth_client::SaslAuthClient;

    let (_dir, _redis, stack) = stack("exchange-sigterm");
    let (mut replica, addr) = stack.spawn_sasl_replica("sasl-auth-2");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (tx, mut answers) = rt.block_on(async {
        let mut client =
            SaslAuthClient::with_interceptor(channel_to(addr).await, internal_token(&stack.dir));
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let answers = client
            .exchange(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("Exchange opens")
            .into_inner();
        (tx, answers)
    });
    let ask = |call: u64, request: Option<pb::exchange_request::Request>| {
        let tx = tx.clone();
        rt.block_on(async move {
            tx.send(pb::ExchangeRequest {
                call,
                traceparent: String::new(),
                request,
            })
            .await
            .unwrap()
        })
    };
    let mut next = || {
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), answers.message()).await })
            .expect("an answer or the end within 5 s")
    };
    ask(
        41,
        Some(pb::exchange_request::Request::Start(pb::StartRequest {
            mechanism: "CRAM-MD5".into(),
            session: Some(pb::SessionFacts {
                session_id: "stream-sigterm".into(),
                client_address: "127.0.0.1:40000".into(),
                listener: "relay".into(),
                ..Default::default()
            }),
            ..Default::default()
        })),
    );
    let a = next().unwrap().expect("an answer");
    assert_eq!(a.call, 41);
    assert!(
        matches!(
            a.response.and_then(|r| r.result),
            Some(pb::step_response::Result::Challenge(_))
        ),
        "CRAM-MD5 starts with a challenge"
    );
    ask(42, None);
    let a = next().unwrap().expect("an answer");
    assert_eq!(a.call, 42);
    match a.response.and_then(|r| r.result) {
        Some(pb::step_response::Result::Failure(f)) => {
            assert_eq!(f.kind, pb::failure::Kind::Malformed as i32, "{f:?}")
        }
        other => panic!("an empty request was not refused as malformed: {other:?}"),
    }
    // The client holds its end open; the replica must end the stream.
    replica.signal("TERM");
    let end = next();
    assert!(
        matches!(end, Ok(None)),
        "the stream did not end cleanly on SIGTERM: {end:?}"
    );
    let status = replica.wait_exit(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "sasl-auth did not exit cleanly within 10 s of SIGTERM: {status:?}\n{}",
        replica.log_text()
    );
    drop(tx);
}
