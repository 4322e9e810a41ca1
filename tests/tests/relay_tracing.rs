//! Trace across relays (issue 7 item 3): a message submitted with AUTH to a
//! relay stack and relayed with AUTH=client to a hub stack is ONE trace —
//! the relay's session, AUTH, sasl-auth, credential-store, its relay-queue
//! enqueue and delivery, and the hub's AUTH with its sasl-auth — through
//! the envelope's `traceparent` and our `XTRACE` EHLO extension. And XTRACE
//! is harmless: malformed values are refused, it is taken once, and it
//! never changes what a session may do.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use authrelay_e2e::otlp::{Received, Receiver};
use authrelay_e2e::*;
use authrelay_sasl::Mechanism;
use serde_json::json;

const PASSWORD: &str = "relay-Trace-Pw-31";
const HUB_SECRET: &str = "hub-Trace-Secret-77";

fn otel_env(receiver: &Receiver) -> Vec<(String, String)> {
    vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
            receiver.endpoint(),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "100".to_owned()),
    ]
}

fn scrape(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

fn names(spans: &[&Received]) -> Vec<String> {
    spans
        .iter()
        .map(|s| format!("{}:{}", s.service, s.span.name))
        .collect()
}

#[test]
fn a_relayed_message_and_both_hops_auth_are_one_trace_across_two_stacks() {
    let dir = scratch("relay-trace");
    let hub_dir = dir.join("hub");
    let relay_dir = dir.join("relay");
    std::fs::create_dir_all(&hub_dir).unwrap();
    std::fs::create_dir_all(&relay_dir).unwrap();
    let receiver = Receiver::start();
    let hub_redis = Redis::start(&hub_dir);
    let relay_redis = Redis::start(&relay_dir);
    let sink = Sink::start(&hub_dir);
    let hub = Stack::start(
        &hub_dir,
        &hub_redis,
        StackOptions {
            hostname: "mailhub.foo.com".into(),
            realm: "foo".into(),
            smarthost: Some(sink.addr),
            env: otel_env(&receiver),
            ..Default::default()
        },
    );
    hub.add_user("mailrelay", "foo", HUB_SECRET);
    let mut relay = Stack::start(
        &relay_dir,
        &relay_redis,
        StackOptions {
            hostname: "mailrelay.foo.com".into(),
            smarthost: Some(hub.relay),
            env: otel_env(&receiver),
            ..Default::default()
        },
    );
    relay.add_user("test", "mailserver.foo.com", PASSWORD);
    let authinfo = relay_dir.join("authinfo");
    std::fs::write(
        &authinfo,
        format!(
            "AuthInfo:127.0.0.1 \"U:mailrelay\" \"P:{HUB_SECRET}\" \"R:foo\" \"M:SCRAM-SHA-256\"\n"
        ),
    )
    .unwrap();
    // Only the relay's relay-queue serves metrics (one port per process).
    for (k, v) in [
        (
            "AUTHRELAY__RELAY_QUEUE__AUTHINFO_FILE",
            authinfo.display().to_string(),
        ),
        (
            "AUTHRELAY__TELEMETRY__METRICS_LISTEN",
            "127.0.0.1:0".to_owned(),
        ),
    ] {
        relay.endpoints.push((k.to_owned(), v));
    }
    relay.restart_queue();
    let metrics = relay.queue.addr("metrics");
    let sent = "authrelay_deliveries_total{outcome=\"sent\"}";
    assert_eq!(sample(&scrape(metrics), sent), 0.0);

    let res = smtplib(
        json!({"port": relay.submission.port(), "starttls": true, "mech": "PLAIN",
               "user": "test@mailserver.foo.com", "from": "test@mailserver.foo.com",
               "to": ["friend@outside.example"],
               "body": "Subject: traced\r\n\r\none trace, two hops\r\n"}),
        PASSWORD,
    );
    assert_eq!(res["auth"][0], 235, "{res}");
    assert_eq!(res["send"]["ok"], true, "{res}");
    let msgs = sink.wait_messages(1, Duration::from_secs(60));
    assert_eq!(
        msgs.len(),
        1,
        "relay:\n{}\nhub:\n{}",
        relay.logs(),
        hub.logs()
    );

    // The relay's delivery span, and the hub's AUTH in its trace.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (deliver, trace) = loop {
        let spans = receiver.spans();
        let found = spans.iter().find_map(|d| {
            // The relay's delivery to the hub (the hub's own, to its sink,
            // is in the same trace).
            if d.service != "relay-queue"
                || d.span.name != "relay-queue deliver"
                || d.attr("outcome").as_deref() != Some("sent")
                || d.attr("server.port") != Some(hub.relay.port().to_string())
            {
                return None;
            }
            let trace: Vec<Received> = spans
                .iter()
                .filter(|s| s.trace_id() == d.trace_id())
                .cloned()
                .collect();
            let hub_auth = trace
                .iter()
                .any(|s| s.span.name == "smtp AUTH SCRAM-SHA-256");
            let relay_auth = trace.iter().any(|s| s.span.name == "smtp AUTH PLAIN");
            let hub_sasl = trace.iter().filter(|s| s.service == "sasl-auth").count() >= 2;
            let both_deliveries = trace
                .iter()
                .filter(|s| s.span.name == "relay-queue deliver")
                .count()
                >= 2;
            (hub_auth && relay_auth && hub_sasl && both_deliveries).then(|| (d.clone(), trace))
        });
        if let Some(f) = found {
            break f;
        }
        assert!(
            Instant::now() < deadline,
            "no single trace with both hops; spans: {:?}",
            spans
                .iter()
                .map(|s| format!("{} {}:{}", &s.trace_id()[..8], s.service, s.span.name))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let all: Vec<&Received> = trace.iter().collect();
    let by_name =
        |name: &str| -> Vec<&Received> { trace.iter().filter(|s| s.span.name == name).collect() };
    let services: HashSet<&str> = trace.iter().map(|s| s.service.as_str()).collect();
    for svc in [
        "smtp-frontend",
        "sasl-auth",
        "credential-store",
        "relay-queue",
    ] {
        assert!(
            services.contains(svc),
            "trace lacks {svc}: {:?}",
            names(&all)
        );
    }
    // One root: the submission's SMTP session on the relay.
    let roots: Vec<&Received> = trace
        .iter()
        .filter(|s| s.span.parent_span_id.is_empty())
        .collect();
    assert_eq!(roots.len(), 1, "one root: {:?}", names(&roots));
    assert_eq!(roots[0].span.name, "smtp session");
    assert_eq!(
        roots[0].attr("server.address").as_deref(),
        Some("mailrelay.foo.com")
    );
    let ids: HashSet<String> = trace.iter().map(Received::span_id).collect();
    for s in &trace {
        assert!(
            s.span.parent_span_id.is_empty() || ids.contains(&s.parent_id()),
            "{}:{} has a parent outside the trace",
            s.service,
            s.span.name
        );
    }
    let child_of = |parent: &Received, service: &str| {
        trace
            .iter()
            .any(|s| s.service == service && s.parent_id() == parent.span_id())
    };
    // Hop 1: the submission's AUTH, through sasl-auth to credential-store.
    let relay_auth = by_name("smtp AUTH PLAIN")[0];
    assert_eq!(relay_auth.attr("outcome").as_deref(), Some("success"));
    assert!(
        child_of(relay_auth, "sasl-auth"),
        "sasl-auth under AUTH PLAIN"
    );
    assert!(
        trace.iter().any(|s| s.service == "credential-store"),
        "{:?}",
        names(&all)
    );
    // The queue: enqueue and delivery under the submission.
    assert!(
        !by_name("relay-queue enqueue").is_empty(),
        "{:?}",
        names(&all)
    );
    assert_eq!(deliver.attr("server.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(
        deliver.attr("server.port"),
        Some(hub.relay.port().to_string())
    );
    assert_eq!(
        deliver.attr("messaging.operation.type").as_deref(),
        Some("send")
    );
    assert!(deliver.attr("messaging.message.id").is_some());
    let auth_client = by_name("smtp AUTH client");
    assert_eq!(auth_client.len(), 1, "{:?}", names(&all));
    assert_eq!(auth_client[0].parent_id(), deliver.span_id());
    assert_eq!(
        auth_client[0].attr("sasl.mechanism").as_deref(),
        Some("SCRAM-SHA-256")
    );
    assert_eq!(auth_client[0].attr("outcome").as_deref(), Some("success"));
    // Hop 2: the hub's AUTH (adopted through XTRACE) and its sasl-auth.
    let hub_auth = by_name("smtp AUTH SCRAM-SHA-256")[0];
    assert_eq!(hub_auth.service, "smtp-frontend");
    assert_eq!(hub_auth.attr("outcome").as_deref(), Some("success"));
    assert_eq!(
        hub_auth.parent_id(),
        deliver.span_id(),
        "the hub's AUTH continues the relay's delivery span"
    );
    assert!(
        child_of(hub_auth, "sasl-auth"),
        "hub sasl-auth under its AUTH"
    );
    assert!(
        trace
            .iter()
            .filter(|s| s.service == "credential-store")
            .count()
            >= 2,
        "both credential-stores: {:?}",
        names(&all)
    );
    // The hub queued the message in the same trace and delivered it onward.
    assert!(
        by_name("relay-queue deliver").len() >= 2,
        "the hub's delivery to its sink: {:?}",
        names(&all)
    );
    let hub_log = hub.frontend.log_text();
    assert!(
        hub_log.contains(&format!("trace_id={}", deliver.trace_id())),
        "the hub's AUTH log line names the relay's trace:\n{hub_log}"
    );

    // No secret of either hop reached a span.
    let dump = receiver.dump();
    for secret in [
        PASSWORD.to_owned(),
        HUB_SECRET.to_owned(),
        b64(format!("\0test@mailserver.foo.com\0{PASSWORD}").as_bytes()),
    ] {
        assert!(!dump.contains(&secret), "a secret reached a span");
    }

    // The relay-queue's metrics moved: one sent, the queue empty again.
    wait_for_metrics(metrics, |m| {
        sample(m, sent) == 1.0 && sample(m, "authrelay_queue_messages") == 0.0
    });
}

fn wait_for_metrics(addr: std::net::SocketAddr, ok: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = scrape(addr);
        if ok(&m) {
            return;
        }
        assert!(Instant::now() < deadline, "metrics never matched:\n{m}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn xtrace_parents_auth_spans_only_once_ignores_malformed_values_and_never_authorizes() {
    let dir = scratch("xtrace");
    let receiver = Receiver::start();
    let redis = Redis::start(&dir);
    let stack = Stack::start(
        &dir,
        &redis,
        StackOptions {
            env: otel_env(&receiver),
            ..Default::default()
        },
    );
    stack.add_user("test", "mailserver.foo.com", PASSWORD);
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let mut c = Raw::connect(stack.relay);
    let (code, ehlo) = c.cmd("EHLO peer.example");
    assert_eq!(code, 250);
    assert!(ehlo.contains("XTRACE"), "advertised: {ehlo}");
    for bad in [
        "XTRACE",
        "XTRACE nonsense",
        "XTRACE 00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "XTRACE 00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
    ] {
        let (code, text) = c.cmd(bad);
        assert!(code == 501 || code == 500, "{bad}: {code} {text}");
    }
    let (code, text) = c.cmd(&format!("XTRACE 00-{trace_id}-{parent}-01"));
    assert_eq!(code, 250, "{text}");
    let (code, _) = c.cmd("XTRACE 00-11111111111111111111111111111111-2222222222222222-01");
    assert_eq!(code, 503, "only once per session");
    // It grants nothing: relaying is still denied without AUTH …
    c.cmd("MAIL FROM:<peer@peer.example>");
    let (code, text) = c.cmd("RCPT TO:<someone@outside.example>");
    assert!(code >= 500, "relaying denied: {code} {text}");
    c.cmd("RSET");
    // … a wrong password still fails, the right one still succeeds.
    assert_eq!(
        auth_raw(
            &mut c,
            Mechanism::CramMd5,
            "test@mailserver.foo.com",
            "wrong"
        ),
        535
    );
    assert_eq!(
        auth_raw(
            &mut c,
            Mechanism::CramMd5,
            "test@mailserver.foo.com",
            PASSWORD
        ),
        235
    );
    c.cmd("QUIT");

    let deadline = Instant::now() + Duration::from_secs(30);
    let auths = loop {
        let auths: Vec<Received> = receiver
            .spans()
            .into_iter()
            .filter(|s| s.span.name == "smtp AUTH CRAM-MD5")
            .collect();
        if auths.len() >= 2 || Instant::now() > deadline {
            break auths;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(auths.len(), 2, "two AUTH spans");
    for a in &auths {
        assert_eq!(a.trace_id(), trace_id, "AUTH continues the XTRACE trace");
        assert_eq!(a.parent_id(), parent);
    }
    let outcomes: HashSet<String> = auths.iter().filter_map(|a| a.attr("outcome")).collect();
    assert_eq!(
        outcomes,
        HashSet::from(["success".to_owned(), "failure".to_owned()])
    );
    // The trace came from outside; the session span itself stays its own root.
    let sessions: Vec<Received> = receiver
        .spans()
        .into_iter()
        .filter(|s| s.span.name == "smtp session")
        .collect();
    assert!(sessions.iter().all(|s| s.trace_id() != trace_id));
}

/// XTRACE is offered only to `frontend.xtrace_networks` (loopback by
/// default, which the test above relies on): with it empty, EHLO does not
/// name it and the command is unknown (500), as for any unoffered verb.
#[test]
fn xtrace_is_neither_offered_nor_taken_outside_xtrace_networks() {
    let dir = scratch("xtrace-off");
    let redis = Redis::start(&dir);
    let stack = Stack::start(
        &dir,
        &redis,
        StackOptions {
            extra_toml: "[frontend]\nxtrace_networks = []\n".into(),
            ..Default::default()
        },
    );
    let mut c = Raw::connect(stack.relay);
    let (code, ehlo) = c.cmd("EHLO peer.example");
    assert_eq!(code, 250);
    assert!(!ehlo.contains("XTRACE"), "offered: {ehlo}");
    let (code, text) = c.cmd("XTRACE 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    assert_eq!((code, text.contains("5.5.1")), (500, true), "{text}");
    let (code, _) = c.cmd("NOOP");
    assert_eq!(code, 250, "the session goes on");
}
