//! One trace per authentication, end to end: the services run as separate
//! processes exporting OTLP to a receiver built from the official OTLP
//! protobuf definitions; every AUTH is one trace with spans from
//! smtp-frontend, sasl-auth, credential-store and Redis, correctly linked;
//! no secret reaches a span or a log; the metrics move by the right amounts.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use authrelay_e2e::otlp::{Received, Receiver};
use authrelay_e2e::*;
use authrelay_proto::credentials::v1 as cpb;
use authrelay_sasl::Mechanism;
use serde_json::json;

const PASSWORD: &str = "trace-Secret-99";
const USER: &str = "test@mailserver.foo.com";

fn metrics(addr: std::net::SocketAddr) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn counter(text: &str, mech: &str, outcome: &str) -> u64 {
    let key =
        format!("authrelay_auth_attempts_total{{mechanism=\"{mech}\",outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
}

/// Stored secrets of the test user, in every textual form a leak could take.
fn stored_secret_forms(stack: &Stack) -> Vec<String> {
    let addr = stack
        .endpoints
        .iter()
        .find(|(k, _)| k.ends_with("CREDENTIAL_STORE"))
        .unwrap()
        .1
        .clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut forms = Vec::new();
    rt.block_on(async {
        let mut c = cpb::credential_store_client::CredentialStoreClient::with_interceptor(
            tonic::transport::Endpoint::from_shared(addr)
                .unwrap()
                .connect()
                .await
                .unwrap(),
            internal_token(&stack.dir),
        );
        for family in [
            "password",
            "cram-md5",
            "digest-md5",
            "scram-sha-1",
            "scram-sha-256",
        ] {
            let r = c
                .get_secret(cpb::GetSecretRequest {
                    name: "test".into(),
                    realm: "mailserver.foo.com".into(),
                    family: family.into(),
                })
                .await
                .unwrap()
                .into_inner();
            assert!(r.found, "{family}");
            use cpb::secret::Kind;
            match r.secret.unwrap().kind.unwrap() {
                Kind::Password(p) => forms.push(p.phc.rsplit('$').next().unwrap().to_owned()),
                Kind::CramMd5(c) => {
                    let bytes: Vec<u8> = c
                        .inner
                        .iter()
                        .chain(&c.outer)
                        .flat_map(|w| w.to_le_bytes())
                        .collect();
                    forms.push(otlp::hex(&bytes[..16]));
                    forms.push(b64(&bytes[..16]));
                }
                Kind::DigestMd5(d) => {
                    forms.push(otlp::hex(&d.ha1));
                    forms.push(b64(&d.ha1));
                }
                Kind::ScramSha1(k) | Kind::ScramSha256(k) => {
                    for key in [k.stored_key, k.server_key] {
                        forms.push(otlp::hex(&key));
                        forms.push(b64(&key));
                    }
                }
            }
        }
    });
    forms
}

#[test]
fn each_auth_is_one_trace_across_frontend_sasl_auth_credential_store_and_redis() {
    let dir = scratch("tracing");
    let receiver = Receiver::start();
    let redis = Redis::start(&dir);
    let env = vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
            receiver.endpoint(),
        ),
        // Export quickly: the batch processor waits 5 s by default.
        ("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "100".to_owned()),
    ];
    let mut stack = Stack::start(
        &dir,
        &redis,
        StackOptions {
            env,
            // Every AUTH reads its brute-force counters (none trusts a zero
            // read a moment ago), so every trace has the Redis hop to show.
            extra_toml: "[telemetry]\nmetrics_listen = \"127.0.0.1:0\"\n\n\
                         [sasl.limits]\nclean_ttl = \"0s\"\n"
                .into(),
            ..Default::default()
        },
    );
    stack.add_user("test", "mailserver.foo.com", PASSWORD);
    let metrics_addr = stack.frontend.addr("metrics");
    let before = metrics(metrics_addr);

    // PLAIN (after STARTTLS) and CRAM-MD5 with smtplib; DIGEST-MD5 and
    // SCRAM-SHA-256 with our client over a raw socket. One session each.
    for mech in ["PLAIN", "CRAM-MD5"] {
        let r = smtplib(
            json!({"port": stack.submission.port(), "starttls": mech == "PLAIN", "mech": mech, "user": USER}),
            PASSWORD,
        );
        assert_eq!(r["auth"][0], 235, "{mech}: {r}");
    }
    for (mech, user) in [
        (Mechanism::DigestMd5, "test"),
        (Mechanism::ScramSha256, USER),
    ] {
        let mut c = Raw::connect(stack.relay);
        c.cmd("EHLO client.example");
        assert_eq!(auth_raw(&mut c, mech, user, PASSWORD), 235, "{mech:?}");
        c.cmd("QUIT");
    }
    // And one failure.
    let r = smtplib(
        json!({"port": stack.submission.port(), "starttls": true, "mech": "PLAIN", "user": USER}),
        "wrong-password",
    );
    assert_eq!(r["auth"][0], 535);

    // Wait for every AUTH span and the spans of its trace to arrive.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (spans, by_trace) = loop {
        let spans = receiver.spans();
        let mut by_trace: HashMap<String, Vec<Received>> = HashMap::new();
        for s in &spans {
            by_trace.entry(s.trace_id()).or_default().push(s.clone());
        }
        let auth_spans = spans
            .iter()
            .filter(|s| s.span.name.starts_with("smtp AUTH"))
            .count();
        let complete = by_trace
            .values()
            .filter(|t| t.iter().any(|s| s.span.name == "smtp session"))
            .count();
        if (auth_spans >= 5 && complete >= 5) || Instant::now() > deadline {
            break (spans, by_trace);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    for mech in ["PLAIN", "CRAM-MD5", "DIGEST-MD5", "SCRAM-SHA-256"] {
        let auth = spans
            .iter()
            .find(|s| {
                s.span.name == format!("smtp AUTH {mech}")
                    && s.attr("outcome").as_deref() == Some("success")
            })
            .unwrap_or_else(|| {
                panic!(
                    "no successful AUTH span for {mech}; got {:?}",
                    spans.iter().map(|s| &s.span.name).collect::<Vec<_>>()
                )
            });
        let trace = &by_trace[&auth.trace_id()];
        let services: HashSet<&str> = trace.iter().map(|s| s.service.as_str()).collect();
        for svc in ["smtp-frontend", "sasl-auth", "credential-store"] {
            assert!(
                services.contains(svc),
                "{mech}: trace lacks {svc}: {services:?}"
            );
        }
        assert!(
            trace
                .iter()
                .any(|s| s.attr("db.system").as_deref() == Some("redis")),
            "{mech}: no Redis span"
        );
        assert!(
            trace.iter().any(|s| s.service == "credential-store"
                && s.attr("db.system").as_deref() == Some("redb")),
            "{mech}: no storage span under credential-store"
        );
        let rpc = trace
            .iter()
            .find(|s| s.service == "sasl-auth" && s.attr("rpc.system").as_deref() == Some("grpc"))
            .unwrap();
        assert_eq!(
            rpc.attr("rpc.service").as_deref(),
            Some("authrelay.sasl.v1.SaslAuth")
        );
        // Parent links: one root (the SMTP session), every other span's
        // parent is in the same trace, and sasl-auth hangs under AUTH.
        let ids: HashSet<String> = trace.iter().map(Received::span_id).collect();
        let roots: Vec<&Received> = trace
            .iter()
            .filter(|s| s.span.parent_span_id.is_empty())
            .collect();
        assert_eq!(roots.len(), 1, "{mech}: one root");
        assert_eq!(roots[0].span.name, "smtp session");
        for s in trace {
            assert!(
                s.span.parent_span_id.is_empty() || ids.contains(&s.parent_id()),
                "{mech}: {} has a dangling parent",
                s.span.name
            );
        }
        let auth_in_trace = trace
            .iter()
            .find(|s| s.span.name.starts_with("smtp AUTH"))
            .unwrap();
        assert!(
            trace
                .iter()
                .filter(|s| s.service == "sasl-auth")
                .any(|s| s.parent_id() == auth_in_trace.span_id()),
            "{mech}: a sasl-auth span is a child of the AUTH span"
        );
    }

    // The failed AUTH: its span says so, and a log line carries its trace id.
    let failed = spans
        .iter()
        .find(|s| {
            s.span.name == "smtp AUTH PLAIN" && s.attr("outcome").as_deref() == Some("failure")
        })
        .expect("failed AUTH span");
    assert_eq!(
        failed.span.status.as_ref().map(|s| s.code),
        Some(2),
        "status Error"
    );
    let frontend_log = stack.frontend.log_text();
    let line = frontend_log
        .lines()
        .find(|l| l.contains("AUTH failure (PLAIN)"))
        .expect("AUTH failure log line");
    assert!(
        line.contains(&failed.trace_id()),
        "log line names the trace: {line}"
    );

    // No secret in any span or log line.
    let dump = receiver.dump();
    let logs = stack.logs();
    let mut secrets = vec![
        PASSWORD.to_owned(),
        "wrong-password".to_owned(),
        b64(format!("\0{USER}\0{PASSWORD}").as_bytes()),
        b64(format!("{USER}\0{USER}\0{PASSWORD}").as_bytes()),
    ];
    secrets.extend(stored_secret_forms(&stack));
    for s in &secrets {
        assert!(!dump.contains(s.as_str()), "a secret reached a span");
        assert!(!logs.contains(s.as_str()), "a secret reached a log");
    }

    // Metrics moved by exactly the logins above.
    let after = metrics(metrics_addr);
    for (mech, outcome, n) in [
        ("PLAIN", "success", 1),
        ("PLAIN", "failure", 1),
        ("CRAM-MD5", "success", 1),
        ("DIGEST-MD5", "success", 1),
        ("SCRAM-SHA-256", "success", 1),
    ] {
        assert_eq!(
            counter(&after, mech, outcome) - counter(&before, mech, outcome),
            n,
            "{mech} {outcome}:\n{after}"
        );
    }
    assert!(
        after.contains("authrelay_auth_duration_seconds_bucket"),
        "{after}"
    );
    assert!(
        after.contains(
            "authrelay_grpc_client_duration_seconds_count{operation=\"sasl-auth/Start\",status=\"OK\"} "
        ),
        "gRPC latency is observed: {after}"
    );
    stack.frontend.signal("TERM");
}

#[test]
fn without_an_otlp_endpoint_services_export_nothing_and_stay_quiet() {
    // (The directory name must not contain a word the test greps for.)
    let dir = scratch("no-export");
    let redis = Redis::start(&dir);
    let stack = Stack::start(&dir, &redis, StackOptions::default());
    stack.add_user("test", "mailserver.foo.com", PASSWORD);
    let r = smtplib(
        json!({"port": stack.submission.port(), "mech": "CRAM-MD5", "user": USER}),
        PASSWORD,
    );
    assert_eq!(r["auth"][0], 235);
    let logs = stack.logs().to_lowercase();
    for noise in ["otlp", "opentelemetry", "exporter"] {
        assert!(
            !logs.contains(noise),
            "{noise} in logs without an endpoint:\n{logs}"
        );
    }
}
