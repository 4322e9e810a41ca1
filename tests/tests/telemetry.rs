//! Telemetry as OpenTelemetry and Prometheus users expect it, against a
//! real OTLP receiver (gRPC and HTTP) and Prometheus' own Python parsers:
//! span export apart from the log level; the standard OTEL_* variables;
//! no user name in any span or span event unless allowed; trace ids on
//! every traced log line of every service; no background noise traces;
//! `/metrics` negotiated, valid, and per process.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use authrelay_e2e::otlp::{Received, Receiver};
use authrelay_e2e::*;
use authrelay_sasl::Mechanism;
use serde_json::{Value, json};

const PASSWORD: &str = "telemetry-Pw-4711";
/// Distinctive, so a grep of everything exported finds nothing else.
const USER_NAME: &str = "zebulonq";
const REALM: &str = "mailserver.foo.com";

fn user() -> String {
    format!("{USER_NAME}@{REALM}")
}

fn otel_env(receiver: &Receiver) -> Vec<(String, String)> {
    vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
            receiver.endpoint(),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "100".to_owned()),
    ]
}

/// One submission with AUTH (PLAIN after STARTTLS) and a message to the sink.
fn submit(stack: &Stack) {
    let res = smtplib(
        json!({"port": stack.submission.port(), "starttls": true, "mech": "PLAIN",
               "user": user(), "from": user(), "to": ["friend@outside.example"],
               "body": "Subject: t\r\n\r\nhello\r\n"}),
        PASSWORD,
    );
    assert_eq!(res["auth"][0], 235, "{res}");
    assert_eq!(res["send"]["ok"], true, "{res}");
}

fn wait_spans(receiver: &Receiver, what: &str, ok: impl Fn(&[Received]) -> bool) -> Vec<Received> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let spans = receiver.spans();
        if ok(&spans) {
            return spans;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: got {:?}",
            spans
                .iter()
                .map(|s| format!("{}:{}", s.service, s.span.name))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn has(spans: &[Received], service: &str, name: &str) -> bool {
    spans
        .iter()
        .any(|s| s.service == service && s.span.name.starts_with(name))
}

/// The auth path, whole: AUTH, sasl-auth, Redis, credential-store, storage.
fn auth_path_complete(spans: &[Received]) -> bool {
    has(spans, "smtp-frontend", "smtp AUTH PLAIN")
        && has(spans, "sasl-auth", "authrelay.sasl.v1.SaslAuth/")
        && has(spans, "credential-store", "credential-store storage read")
        && spans
            .iter()
            .any(|s| s.attr("db.system").as_deref() == Some("redis"))
}

/// `log.level = "warn"` says nothing at info, yet every span of the auth
/// path is exported (per-layer filters); no background root traces while
/// the stack idles; every info line of every service inside a traced unit
/// of work carries its trace and span ids, in JSON too; and with
/// `span_user_names` off no span attribute or span event names the user.
#[test]
fn quiet_logs_full_traces_no_user_names_no_noise_and_trace_ids_in_every_service() {
    let dir = scratch("telemetry-levels");
    let receiver = Receiver::start();
    let redis = Redis::start(&dir);
    let sink = Sink::start(&dir);
    let stack = Stack::start(
        &dir,
        &redis,
        StackOptions {
            smarthost: Some(sink.addr),
            // The log level (RUST_LOG, as operators set it) says warn.
            env: [
                otel_env(&receiver),
                vec![("RUST_LOG".to_owned(), "warn".to_owned())],
            ]
            .concat(),
            ..Default::default()
        },
    );
    stack.add_user(USER_NAME, REALM, PASSWORD);
    submit(&stack);
    sink.wait_messages(1, Duration::from_secs(60));
    let spans = wait_spans(&receiver, "auth path at log.level=warn", |s| {
        auth_path_complete(s)
            && has(s, "relay-queue", "relay-queue deliver")
            && has(s, "credential-store", "credential-store PutUser")
    });
    // Nothing at info reached the log.
    let logs = stack.logs();
    assert!(!logs.contains("AUTH=server"), "info lines at warn:\n{logs}");

    // No user name, anywhere in what was exported (attributes and events
    // of every span: session, AUTH, sasl-auth, PutUser, enqueue, delivery).
    let dump = receiver.dump();
    assert!(
        !dump.contains(USER_NAME),
        "a user name reached a span:\n{dump}"
    );
    assert!(
        !spans.iter().any(|s| s.attr("enduser.id").is_some()),
        "enduser.id without span_user_names"
    );

    // Background noise: idle for a while; every trace that starts now has
    // a root that is a request, never a lone client call (Redis, storage).
    let before: HashSet<String> = receiver.spans().iter().map(Received::trace_id).collect();
    std::thread::sleep(Duration::from_secs(6));
    let idle: Vec<Received> = receiver
        .spans()
        .into_iter()
        .filter(|s| !before.contains(&s.trace_id()))
        .collect();
    let roots: Vec<String> = idle
        .iter()
        .filter(|s| s.span.parent_span_id.is_empty())
        .map(|s| format!("{}:{}", s.service, s.span.name))
        .collect();
    assert!(roots.is_empty(), "idle stack made traces: {roots:?}");
}

#[test]
fn trace_ids_on_every_traced_log_line_of_every_service_in_json() {
    let dir = scratch("telemetry-json");
    let receiver = Receiver::start();
    let redis = Redis::start(&dir);
    let sink = Sink::start(&dir);
    let stack = Stack::start(
        &dir,
        &redis,
        StackOptions {
            smarthost: Some(sink.addr),
            env: [
                otel_env(&receiver),
                vec![("RUST_LOG".to_owned(), "info,sasl_auth=debug".to_owned())],
            ]
            .concat(),
            extra_toml: "[log]\nformat = \"json\"\n".into(),
            ..Default::default()
        },
    );
    stack.add_user(USER_NAME, REALM, PASSWORD);
    submit(&stack);
    sink.wait_messages(1, Duration::from_secs(60));
    wait_spans(&receiver, "a delivered submission", |s| {
        auth_path_complete(s)
            && has(s, "relay-queue", "relay-queue deliver")
            && has(s, "credential-store", "credential-store PutUser")
    });
    // Each service's log: JSON lines; the traced ones name a span that was
    // exported, by this very service, in the same trace.
    let line_with = |proc: &Proc, needle: &str| -> Value {
        let text = proc.log_text();
        let line = text
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{}: no line with {needle:?}:\n{text}", proc.name));
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    };
    let lines: Vec<(&str, &str, Value)> = [
        (&stack.frontend, "AUTH=server", "smtp-frontend"),
        (&stack.sasl, "authenticated", "sasl-auth"),
        (&stack.creds, "user stored", "credential-store"),
        (&stack.queue, "stat=queued", "relay-queue"),
        (&stack.queue, "stat=Sent", "relay-queue"),
    ]
    .into_iter()
    .map(|(proc, needle, service)| (needle, service, line_with(proc, needle)))
    .collect();
    let span_of = |line: &Value| -> String {
        line["span_id"]
            .as_str()
            .unwrap_or_else(|| panic!("{line}"))
            .to_owned()
    };
    // A span is exported when it ends, by a batch exporter on its own
    // schedule: the line can be written before its span reaches us.
    let spans = wait_spans(&receiver, "the spans the log lines name", |s| {
        lines
            .iter()
            .all(|(_, _, line)| s.iter().any(|x| x.span_id() == span_of(line)))
    });
    let by_span: HashMap<String, &Received> = spans.iter().map(|s| (s.span_id(), s)).collect();
    for (needle, service, line) in &lines {
        let trace_id = line["trace_id"]
            .as_str()
            .unwrap_or_else(|| panic!("{line}"));
        let span = &by_span[&span_of(line)];
        assert_eq!(span.trace_id(), trace_id, "{needle}");
        assert_eq!(span.service, *service, "{needle}");
    }
    // The delivery line is in the submission's trace.
    let auth = spans
        .iter()
        .find(|s| s.span.name == "smtp AUTH PLAIN")
        .unwrap();
    let sent = line_with(&stack.queue, "stat=Sent");
    let session_trace = auth.trace_id();
    assert_eq!(sent["trace_id"].as_str(), Some(session_trace.as_str()));
    // Lines outside any unit of work have none.
    let log = stack.logs();
    let outside: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| {
            v.get("spans")
                .and_then(Value::as_array)
                .is_none_or(|a| a.is_empty())
        })
        .collect();
    assert!(!outside.is_empty());
    assert!(outside.iter().all(|v| v.get("trace_id").is_none()), "{log}");
}

#[test]
fn span_user_names_on_puts_the_user_on_auth_spans() {
    let dir = scratch("telemetry-usernames");
    let receiver = Receiver::start();
    let redis = Redis::start(&dir);
    let stack = Stack::start(
        &dir,
        &redis,
        StackOptions {
            env: otel_env(&receiver),
            extra_toml: "[telemetry]\nspan_user_names = true\n".into(),
            ..Default::default()
        },
    );
    stack.add_user(USER_NAME, REALM, PASSWORD);
    let mut c = Raw::connect(stack.relay);
    c.cmd("EHLO client.example");
    assert_eq!(auth_raw(&mut c, Mechanism::CramMd5, &user(), PASSWORD), 235);
    c.cmd("QUIT");
    let spans = wait_spans(&receiver, "AUTH span", |s| {
        has(s, "smtp-frontend", "smtp AUTH")
    });
    let auth = spans
        .iter()
        .find(|s| s.span.name == "smtp AUTH CRAM-MD5")
        .unwrap();
    assert_eq!(auth.attr("enduser.id"), Some(user()));
}

/// OTLP over HTTP (`http/protobuf`) to a real HTTP receiver, with the
/// resource the specification describes: OTEL_RESOURCE_ATTRIBUTES'
/// service.name wins over ours, the downward API's pod and namespace, a
/// service.instance.id per process.
#[test]
fn http_protobuf_exports_with_the_resource_the_environment_names() {
    let dir = scratch("telemetry-http");
    let receiver = Receiver::start();
    let redis = Redis::start(&dir);
    let env = vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
            receiver.http_endpoint(),
        ),
        (
            "OTEL_EXPORTER_OTLP_PROTOCOL".to_owned(),
            "http/protobuf".to_owned(),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "100".to_owned()),
        (
            "OTEL_RESOURCE_ATTRIBUTES".to_owned(),
            "service.name=mailrelay-eu,deployment.environment.name=test".to_owned(),
        ),
        ("K8S_POD_NAME".to_owned(), "authrelay-7d9f-abc12".to_owned()),
        ("K8S_NAMESPACE_NAME".to_owned(), "mail".to_owned()),
    ];
    let stack = Stack::start(
        &dir,
        &redis,
        StackOptions {
            env,
            ..Default::default()
        },
    );
    stack.add_user(USER_NAME, REALM, PASSWORD);
    let mut c = Raw::connect(stack.relay);
    c.cmd("EHLO client.example");
    assert_eq!(auth_raw(&mut c, Mechanism::CramMd5, &user(), PASSWORD), 235);
    c.cmd("QUIT");
    let spans = wait_spans(&receiver, "spans over HTTP", |s| {
        s.iter().any(|s| s.span.name == "smtp AUTH CRAM-MD5")
            && s.iter()
                .any(|s| s.span.name.starts_with("authrelay.sasl.v1"))
    });
    assert!(
        spans.iter().all(|s| s.service == "mailrelay-eu"),
        "OTEL_RESOURCE_ATTRIBUTES' service.name wins: {:?}",
        spans.iter().map(|s| &s.service).collect::<HashSet<_>>()
    );
    let auth = spans
        .iter()
        .find(|s| s.span.name == "smtp AUTH CRAM-MD5")
        .unwrap();
    assert_eq!(
        auth.resource_attr("k8s.pod.name").as_deref(),
        Some("authrelay-7d9f-abc12")
    );
    assert_eq!(
        auth.resource_attr("k8s.namespace.name").as_deref(),
        Some("mail")
    );
    assert_eq!(
        auth.resource_attr("deployment.environment.name").as_deref(),
        Some("test")
    );
    // One instance id per process: frontend and sasl-auth differ.
    let sasl = spans
        .iter()
        .find(|s| s.span.name.starts_with("authrelay.sasl.v1"))
        .unwrap();
    let (a, b) = (
        auth.resource_attr("service.instance.id")
            .expect("instance id"),
        sasl.resource_attr("service.instance.id")
            .expect("instance id"),
    );
    assert_eq!(a.len(), 36, "{a}");
    assert_ne!(a, b);
}

/// OTEL_SERVICE_NAME is above OTEL_RESOURCE_ATTRIBUTES; OTEL_SDK_DISABLED
/// turns export off whatever else is set.
#[test]
fn otel_service_name_wins_and_otel_sdk_disabled_exports_nothing() {
    let dir = scratch("telemetry-env");
    let receiver = Receiver::start();
    let disabled = Receiver::start();
    let redis = Redis::start(&dir);
    let mut env = otel_env(&receiver);
    env.push((
        "OTEL_RESOURCE_ATTRIBUTES".to_owned(),
        "service.name=from-attributes".to_owned(),
    ));
    env.push((
        "OTEL_SERVICE_NAME".to_owned(),
        "from-service-name".to_owned(),
    ));
    let stack = Stack::start(
        &dir,
        &redis,
        StackOptions {
            env,
            ..Default::default()
        },
    );
    stack.add_user(USER_NAME, REALM, PASSWORD);
    // A second frontend with the SDK disabled, pointed at its own receiver.
    let mut off_env = stack.endpoints.clone();
    off_env.retain(|(k, _)| !k.starts_with("OTEL_"));
    off_env.push((
        "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
        disabled.endpoint(),
    ));
    off_env.push(("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "100".to_owned()));
    off_env.push(("OTEL_SDK_DISABLED".to_owned(), "TRUE".to_owned()));
    let mut off = spawn_service("smtp-frontend", &stack.config, &dir, &off_env);
    let off_relay = off.addr("smtp relay");
    for relay in [stack.relay, off_relay] {
        let mut c = Raw::connect(relay);
        c.cmd("EHLO client.example");
        assert_eq!(auth_raw(&mut c, Mechanism::CramMd5, &user(), PASSWORD), 235);
        c.cmd("QUIT");
    }
    let spans = wait_spans(&receiver, "AUTH spans", |s| {
        s.iter()
            .filter(|s| s.span.name == "smtp AUTH CRAM-MD5")
            .count()
            >= 1
    });
    let services: HashSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(services, HashSet::from(["from-service-name"]));
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        disabled.spans().is_empty(),
        "OTEL_SDK_DISABLED=true exported: {:?}",
        disabled
            .spans()
            .iter()
            .map(|s| &s.span.name)
            .collect::<Vec<_>>()
    );
}

/// A collector that is not there: the failure is logged (once, not per
/// batch) and counted.
#[test]
fn export_failures_are_logged_and_counted() {
    let dir = scratch("telemetry-failures");
    let redis = Redis::start(&dir);
    let nobody = free_port();
    let stack = Stack::start(
        &dir,
        &redis,
        StackOptions {
            env: vec![
                (
                    "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
                    format!("http://127.0.0.1:{nobody}"),
                ),
                ("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "100".to_owned()),
                ("OTEL_EXPORTER_OTLP_TIMEOUT".to_owned(), "500".to_owned()),
            ],
            extra_toml: "[telemetry]\nmetrics_listen = \"127.0.0.1:0\"\n".into(),
            ..Default::default()
        },
    );
    stack.add_user(USER_NAME, REALM, PASSWORD);
    let mut frontend = stack.frontend;
    let metrics = frontend.addr("metrics");
    for _ in 0..3 {
        let mut c = Raw::connect(stack.relay);
        c.cmd("EHLO client.example");
        assert_eq!(auth_raw(&mut c, Mechanism::CramMd5, &user(), PASSWORD), 235);
        c.cmd("QUIT");
        std::thread::sleep(Duration::from_millis(700));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = scrape(metrics, None);
        let failures = sample(&body, "authrelay_trace_export_failures_total");
        let log = frontend.log_text();
        let said = log.matches("trace export to").count();
        if failures >= 2.0 && said == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "failures={failures}, log lines={said}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn scrape(addr: std::net::SocketAddr, accept: Option<&str>) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\n{accept}\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Type: "))
        .unwrap_or("")
        .to_owned();
    (content_type, body.to_owned())
}

fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// The families (name → type → samples) as prometheus_client's parser for
/// `mode` ("text" = 0.0.4, "openmetrics") reads `body`.
fn parse(mode: &str, body: &str) -> Vec<Value> {
    let mut child = std::process::Command::new("python3")
        .arg(support("prom_parse.py"))
        .arg(mode)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "prom_parse.py ({e}); install prometheus_client (scripts/test.sh does): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert!(v.get("error").is_none(), "{mode} body invalid: {v}\n{body}");
    v["families"].as_array().unwrap().clone()
}

/// Both formats, parsed by Prometheus' Python client; the families of one
/// process as (name, type) with their sample names.
fn scrape_both(addr: std::net::SocketAddr) -> (Vec<Value>, Vec<Value>) {
    let (ct, text) = scrape(addr, None);
    assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");
    assert!(!text.contains("# EOF"), "{text}");
    let (ct, om) = scrape(
        addr,
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
    );
    assert_eq!(
        ct,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(om.ends_with("# EOF\n"), "{om}");
    (parse("text", &text), parse("openmetrics", &om))
}

fn family_names(families: &[Value]) -> HashSet<String> {
    families
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_owned())
        .collect()
}

fn samples<'a>(families: &'a [Value], name: &str) -> Vec<&'a Value> {
    families
        .iter()
        .filter(|f| f["name"] == name)
        .flat_map(|f| f["samples"].as_array().unwrap())
        .collect()
}

/// Every process's `/metrics` in both formats, valid for Prometheus'
/// parsers; each with the families it owns and no other; Enqueue and
/// sasl-auth's calls in the gRPC client histogram with their status; the
/// auth cache and sealed-state counters from sasl-auth; and every series
/// the Grafana dashboard queries exists somewhere.
#[test]
fn metrics_are_negotiated_valid_and_each_process_exposes_its_own() {
    let dir = scratch("telemetry-metrics");
    let redis = Redis::start(&dir);
    let sink = Sink::start(&dir);
    let mut stack = Stack::start(
        &dir,
        &redis,
        StackOptions {
            smarthost: Some(sink.addr),
            extra_toml: "[telemetry]\nmetrics_listen = \"127.0.0.1:0\"\n".into(),
            ..Default::default()
        },
    );
    stack.add_user(USER_NAME, REALM, PASSWORD);
    submit(&stack);
    sink.wait_messages(1, Duration::from_secs(60));
    // A second login: the secret cache has it now.
    let mut c = Raw::connect(stack.relay);
    c.cmd("EHLO client.example");
    assert_eq!(auth_raw(&mut c, Mechanism::CramMd5, &user(), PASSWORD), 235);
    c.cmd("QUIT");

    let addrs = [
        ("smtp-frontend", stack.frontend.addr("metrics")),
        ("sasl-auth", stack.sasl.addr("metrics")),
        ("credential-store", stack.creds.addr("metrics")),
        ("relay-queue", stack.queue.addr("metrics")),
    ];
    let mut all_families = HashSet::new();
    let mut per: HashMap<&str, (Vec<Value>, Vec<Value>)> = HashMap::new();
    for (service, addr) in addrs {
        let (text, om) = scrape_both(addr);
        // Both formats say the same families (OpenMetrics names counters
        // without _total, 0.0.4 by their sample).
        let om_names: HashSet<String> = family_names(&om);
        for f in &text {
            let name = f["name"].as_str().unwrap();
            assert!(om_names.contains(name), "{service}: {name} only in 0.0.4");
        }
        all_families.extend(family_names(&text));
        per.insert(service, (text, om));
    }
    let owns = |service: &str, family: &str| family_names(&per[service].0).contains(family);
    for (family, owner) in [
        ("authrelay_auth_attempts", "smtp-frontend"),
        ("authrelay_sessions_live", "smtp-frontend"),
        ("authrelay_auth_cache_lookups", "sasl-auth"),
        ("authrelay_bruteforce_blocks", "sasl-auth"),
        ("authrelay_queue_messages", "relay-queue"),
        ("authrelay_deliveries", "relay-queue"),
    ] {
        for (service, _) in addrs {
            assert_eq!(
                owns(service, family),
                service == owner,
                "{family} on {service}: {:?}",
                family_names(&per[service].0)
            );
        }
    }
    assert!(owns("sasl-auth", "authrelay_grpc_client_duration_seconds"));
    assert!(!owns(
        "relay-queue",
        "authrelay_grpc_client_duration_seconds"
    ));
    for (service, _) in addrs {
        assert!(
            owns(service, "authrelay_trace_export_failures"),
            "{service}"
        );
    }
    // Counters are counters in both formats.
    for (service, (text, om)) in &per {
        for families in [text, om] {
            for f in families.iter() {
                if f["name"] == "authrelay_auth_attempts" {
                    assert_eq!(f["type"], "counter", "{service}: {f}");
                }
            }
        }
    }
    // The gRPC client histogram: Enqueue, with status, from the frontend;
    // GetSecret from sasl-auth.
    let count = |service: &str, op: &str| -> f64 {
        samples(&per[service].0, "authrelay_grpc_client_duration_seconds")
            .iter()
            .filter(|s| {
                s["name"] == "authrelay_grpc_client_duration_seconds_count"
                    && s["labels"]["operation"] == op
                    && s["labels"]["status"] == "OK"
            })
            .map(|s| s["value"].as_f64().unwrap())
            .sum()
    };
    assert_eq!(count("smtp-frontend", "relay-queue/Enqueue"), 1.0);
    assert!(count("smtp-frontend", "sasl-auth/Start") >= 2.0);
    assert!(count("sasl-auth", "credential-store/GetSecret") >= 1.0);
    // The auth path's cache counter moved.
    let cache: f64 = samples(&per["sasl-auth"].0, "authrelay_auth_cache_lookups")
        .iter()
        .map(|s| s["value"].as_f64().unwrap())
        .sum();
    assert!(
        cache >= 2.0,
        "{:?}",
        samples(&per["sasl-auth"].0, "authrelay_auth_cache_lookups")
    );

    // The dashboard's series all exist.
    let dashboard = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../k8s/base/grafana-dashboard.json"),
    )
    .unwrap();
    let mut queried = HashSet::new();
    for piece in dashboard.split("authrelay_").skip(1) {
        let name: String = piece
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        queried.insert(format!("authrelay_{name}"));
    }
    for series in queried {
        let family = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| series.strip_suffix(s))
            .unwrap_or(&series)
            .to_owned();
        assert!(
            all_families.contains(&family) || all_families.contains(&series),
            "the dashboard queries {series}, which no process exposes"
        );
    }
}

/// The all-in-one `authrelay serve` exposes every service's families.
#[test]
fn serve_exposes_every_services_families() {
    let dir = scratch("telemetry-serve");
    let port = free_port();
    std::fs::write(
        dir.join("authrelay.toml"),
        format!(
            "data_dir = \"{}\"\n[telemetry]\nmetrics_listen = \"127.0.0.1:{port}\"\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(bin("authrelay"));
    cmd.arg("--config")
        .arg(dir.join("authrelay.toml"))
        .arg("serve")
        .current_dir(&dir);
    let mut serve = Proc::spawn("authrelay serve", cmd, dir.join("serve.log"));
    let addr = serve.addr("metrics");
    let (text, om) = scrape_both(addr);
    // (Labelled families without samples are not written; which families
    // the all-in-one owns — sasl-auth's cache and sealed-state counters
    // too — is the telemetry crate's unit test.)
    for families in [&text, &om] {
        let names = family_names(families);
        for f in [
            "authrelay_sessions_live",
            "authrelay_queue_messages",
            "authrelay_bruteforce_blocks",
            "authrelay_trace_export_failures",
        ] {
            assert!(names.contains(f), "{f}: {names:?}");
        }
    }
    serve.signal("TERM");
    let _ = serve.wait_exit(Duration::from_secs(15));
}
