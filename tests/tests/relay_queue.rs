//! relay-queue end to end: AUTH to the next hop from an AuthInfo map (our
//! own hub stack, and aiosmtpd), no accepted message lost across SIGKILLs,
//! retries with growing delays, DSN bounces, and AuthInfo refused at start.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use authrelay_e2e::*;
use serde_json::json;

const PASSWORD: &str = "tanstaaf-Secret-42";
/// The hub's password for the relay; distinctive so a log grep cannot miss it.
const HUB_SECRET: &str = "hub-Pw-7fq2-zx";

/// Point the stack's relay-queue at `authinfo` (and any other `AUTHRELAY__`
/// overrides) and restart it; admin commands see the same environment.
fn set_queue_env(stack: &mut Stack, vars: &[(&str, String)]) {
    for (k, v) in vars {
        stack.endpoints.retain(|(key, _)| key != k);
        stack.endpoints.push(((*k).to_owned(), v.clone()));
    }
    stack.restart_queue();
}

fn submit(stack: &Stack, from: &str, to: &str, body: &str) -> serde_json::Value {
    let res = smtplib(
        json!({"port": stack.submission.port(), "starttls": true, "mech": "PLAIN",
               "user": "test@mailserver.foo.com", "from": from, "to": [to], "body": body}),
        PASSWORD,
    );
    assert_eq!(res["auth"][0], 235, "{res}");
    assert_eq!(res["send"]["ok"], true, "{res}");
    res
}

fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A relay stack (the seed's mailrelay) whose smarthost is `hop`, with the
/// submitting user `test`.
fn relay_stack(dir: &Path, redis: &Redis, hop: std::net::SocketAddr) -> Stack {
    let stack = Stack::start(
        dir,
        redis,
        StackOptions {
            hostname: "mailrelay.foo.com".into(),
            smarthost: Some(hop),
            ..Default::default()
        },
    );
    stack.add_user("test", "mailserver.foo.com", PASSWORD);
    stack
}

#[test]
fn relay_authenticates_to_hub_stack_with_the_mechanism_its_authinfo_line_forces() {
    let dir = scratch("rq-s2s");
    let hub_dir = dir.join("hub");
    let relay_dir = dir.join("relay");
    std::fs::create_dir_all(&hub_dir).unwrap();
    std::fs::create_dir_all(&relay_dir).unwrap();
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
            ..Default::default()
        },
    );
    // The seed: `saslpasswd -u foo mailrelay` on the hub.
    hub.add_user("mailrelay", "foo", HUB_SECRET);
    let mut relay = relay_stack(&relay_dir, &relay_redis, hub.relay);
    let authinfo = relay_dir.join("authinfo");

    for (i, mech) in [
        "DIGEST-MD5",
        "CRAM-MD5",
        "SCRAM-SHA-256",
        "SCRAM-SHA-256-PLUS",
    ]
    .into_iter()
    .enumerate()
    {
        // The seed's line, for the address the hub listens on.
        std::fs::write(
            &authinfo,
            format!(
                "# relay → hub\nAuthInfo:127.0.0.1 \"U:mailrelay\" \"I:mailrelay\" \"P:{HUB_SECRET}\" \"R:foo\" \"M:{mech}\"\n"
            ),
        )
        .unwrap();
        set_queue_env(
            &mut relay,
            &[(
                "AUTHRELAY__RELAY_QUEUE__AUTHINFO_FILE",
                authinfo.display().to_string(),
            )],
        );
        submit(
            &relay,
            "test@mailserver.foo.com",
            &format!("friend{i}@outside.example"),
            &format!("Subject: via hub with {mech}\r\n\r\nhello {i}\r\n"),
        );
        let msgs = sink.wait_messages(i + 1, Duration::from_secs(60));
        assert_eq!(
            msgs.len(),
            i + 1,
            "{mech}: message reaches the hub's sink; relay logs:\n{}\nhub logs:\n{}",
            relay.logs(),
            hub.logs()
        );
        // The hop has it; wait until the relay has also recorded that, so the
        // restart for the next mechanism cannot cause an at-least-once resend.
        wait_for(
            "the relay's queue to drain",
            Duration::from_secs(30),
            || {
                let (ok, out, _) = relay.authrelay(&["queue", "list", "--json"], "");
                ok && out.trim().is_empty()
            },
        );
        let hub_line = format!("AUTH=server, relay=[127.0.0.1], authid=mailrelay@foo, mech={mech}");
        assert!(
            hub.logs().contains(&hub_line),
            "hub logs {hub_line}:\n{}",
            hub.logs()
        );
        let relay_line = format!("AUTH=client, relay=127.0.0.1, mech={mech}, bits=");
        assert!(
            relay.queue.log_text().contains(&relay_line),
            "relay logs {relay_line}:\n{}",
            relay.queue.log_text()
        );
    }
    assert!(
        relay.queue.log_text().contains("mech=DIGEST-MD5, bits=128"),
        "DIGEST-MD5 logs bits=128 as the seed's Cyrus did"
    );
    for logs in [relay.logs(), hub.logs()] {
        assert!(!logs.contains(HUB_SECRET), "the password is never logged");
    }
    // The hub only relays for authenticated clients: the messages got there
    // because the relay authenticated, and each names the relay's login.
    for m in sink.messages() {
        let data = m["data"].as_str().unwrap();
        assert!(data.contains("authenticated as mailrelay@foo"), "{data}");
    }
}

/// aiosmtpd requiring AUTH (tests/support/sink.py --auth-user).
fn auth_sink(dir: &Path, user: &str, password: &str) -> (Proc, std::net::SocketAddr, PathBuf) {
    let out = dir.join("authsink");
    let mut cmd = Command::new("python3");
    cmd.arg(support("sink.py"))
        .arg(&out)
        .args(["--auth-user", user, "--auth-password-env", "HUB_PASSWORD"])
        .env("HUB_PASSWORD", password);
    let mut proc = Proc::spawn("authsink", cmd, dir.join("authsink.log"));
    let line = proc.wait_line("sink listening on");
    let addr = line.rsplit(' ').next().unwrap().parse().unwrap();
    (proc, addr, out)
}

fn json_files(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn relay_authenticates_to_aiosmtpd_with_plain_and_login() {
    let dir = scratch("rq-aiosmtpd");
    let redis = Redis::start(&dir);
    let (_hub, hub_addr, hub_out) = auth_sink(&dir, "mailrelay", HUB_SECRET);
    let mut relay = relay_stack(&dir, &redis, hub_addr);
    let authinfo = dir.join("authinfo");

    for (i, mech) in ["PLAIN", "LOGIN"].into_iter().enumerate() {
        // PLAIN and LOGIN in the clear only because the line names them.
        std::fs::write(
            &authinfo,
            format!("AuthInfo:127.0.0.1 \"U:mailrelay\" \"P:{HUB_SECRET}\" \"M:{mech}\"\n"),
        )
        .unwrap();
        set_queue_env(
            &mut relay,
            &[(
                "AUTHRELAY__RELAY_QUEUE__AUTHINFO_FILE",
                authinfo.display().to_string(),
            )],
        );
        submit(
            &relay,
            "test@mailserver.foo.com",
            &format!("friend{i}@outside.example"),
            &format!("Subject: {mech}\r\n\r\ny\r\n"),
        );
        wait_for(
            &format!("delivery with {mech}"),
            Duration::from_secs(60),
            || json_files(&hub_out).len() > i,
        );
        let line = format!("AUTH=client, relay=127.0.0.1, mech={mech}, bits=0");
        assert!(
            relay.queue.log_text().contains(&line),
            "{line}:\n{}",
            relay.queue.log_text()
        );
    }
    assert!(dsns(&hub_out).is_empty(), "no bounce: {:?}", dsns(&hub_out));
    for m in json_files(&hub_out) {
        // sink.py records `false` for an unauthenticated session (and
        // requires AUTH before MAIL, so these got in by authenticating).
        assert!(m["auth"].is_string(), "{m}");
    }
    assert!(!relay.logs().contains(HUB_SECRET));
}

#[test]
fn a_wrong_hub_password_defers_and_logs_the_failure_without_the_password() {
    let dir = scratch("rq-wrongpw");
    let redis = Redis::start(&dir);
    let (_hub, hub_addr, hub_out) = auth_sink(&dir, "mailrelay", HUB_SECRET);
    let mut relay = relay_stack(&dir, &redis, hub_addr);
    let authinfo = dir.join("authinfo");
    std::fs::write(
        &authinfo,
        "AuthInfo:127.0.0.1 \"U:mailrelay\" \"P:not-the-Password-9\" \"M:PLAIN\"\n",
    )
    .unwrap();
    set_queue_env(
        &mut relay,
        &[(
            "AUTHRELAY__RELAY_QUEUE__AUTHINFO_FILE",
            authinfo.display().to_string(),
        )],
    );
    submit(
        &relay,
        "test@mailserver.foo.com",
        "x@outside.example",
        "Subject: x\r\n\r\nx\r\n",
    );
    wait_for("AUTH failure", Duration::from_secs(30), || {
        relay
            .queue
            .log_text()
            .contains("AUTH=client, relay=127.0.0.1, mech=PLAIN, failure: 535")
    });
    // 535 is temporary for the message: still queued, no bounce.
    let (ok, out, err) = relay.authrelay(&["queue", "list", "--json"], "");
    assert!(ok, "{err}");
    assert!(out.contains("x@outside.example"), "{out}");
    assert!(json_files(&hub_out).is_empty());
    assert!(!relay.logs().contains("not-the-Password-9"));
}

/// The hop of the retry and bounce tests (tests/support/scripted_hub.py).
fn scripted_hub(dir: &Path) -> (Proc, std::net::SocketAddr, PathBuf) {
    let out = dir.join("hub");
    let mut cmd = Command::new("python3");
    cmd.arg(support("scripted_hub.py")).arg(&out);
    let mut proc = Proc::spawn("scripted-hub", cmd, dir.join("scripted-hub.log"));
    let line = proc.wait_line("hub listening on");
    let addr = line.rsplit(' ').next().unwrap().parse().unwrap();
    (proc, addr, out)
}

fn rcpt_attempts(hub_out: &Path, address: &str) -> Vec<f64> {
    std::fs::read_to_string(hub_out.join("rcpt.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.ends_with(&format!(" {address}")))
        .filter_map(|l| l.split(' ').next()?.parse().ok())
        .collect()
}

#[test]
fn next_hop_451_is_retried_with_growing_delays() {
    let dir = scratch("rq-451");
    let redis = Redis::start(&dir);
    let (_hub, hub_addr, hub_out) = scripted_hub(&dir);
    let mut relay = relay_stack(&dir, &redis, hub_addr);
    set_queue_env(
        &mut relay,
        &[("AUTHRELAY__RELAY_QUEUE__RETRY_MAX", "60s".into())],
    );
    submit(
        &relay,
        "test@mailserver.foo.com",
        "defer@outside.example",
        "Subject: d\r\n\r\nd\r\n",
    );
    wait_for("four attempts", Duration::from_secs(60), || {
        rcpt_attempts(&hub_out, "defer@outside.example").len() >= 4
    });
    let t = rcpt_attempts(&hub_out, "defer@outside.example");
    let gaps: Vec<f64> = t.windows(2).map(|w| w[1] - w[0]).collect();
    // retry_initial 1s doubling with ±25% jitter, in whole seconds on a 1s tick:
    // about 1, 2, 4 seconds.
    assert!(gaps[2] > gaps[0], "delays grow: {gaps:?}");
    assert!(gaps[2] >= 2.5, "third delay near 4s: {gaps:?}");
    let (ok, out, err) = relay.authrelay(&["queue", "list", "--json"], "");
    assert!(ok, "{err}");
    let entry: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert!(entry["attempts"].as_u64().unwrap() >= 3, "{entry}");
    assert!(
        entry["last_error"].as_str().unwrap().contains("451"),
        "{entry}"
    );
    assert!(entry["next_attempt_in_secs"].as_i64().unwrap() >= 0);
}

fn dsns(hub_out: &Path) -> Vec<serde_json::Value> {
    json_files(hub_out)
        .into_iter()
        // aiosmtpd records the null reverse-path as "<>".
        .filter(|m| m["mail_from"] == "<>" || m["mail_from"] == "")
        .collect()
}

#[test]
fn next_hop_550_bounces_exactly_one_dsn_to_the_sender_and_none_for_the_null_sender() {
    let dir = scratch("rq-550");
    let redis = Redis::start(&dir);
    let (_hub, hub_addr, hub_out) = scripted_hub(&dir);
    let relay = relay_stack(&dir, &redis, hub_addr);
    submit(
        &relay,
        "test@mailserver.foo.com",
        "reject@outside.example",
        "Subject: doomed\r\nX-Marker: original\r\n\r\nthe body\r\n",
    );
    wait_for("the DSN", Duration::from_secs(60), || {
        !dsns(&hub_out).is_empty()
    });
    // A message from <> that fails: no DSN (RFC 5321 §4.5.5), only a log line.
    submit(
        &relay,
        "",
        "reject-null@outside.example",
        "Subject: from null\r\n\r\nz\r\n",
    );
    wait_for("the null sender's failure", Duration::from_secs(60), || {
        relay
            .queue
            .log_text()
            .contains("no DSN (null sender or NOTIFY)")
    });
    // Let any duplicate have its chance to arrive.
    std::thread::sleep(Duration::from_secs(4));
    let dsns = dsns(&hub_out);
    assert_eq!(dsns.len(), 1, "exactly one DSN: {dsns:?}");
    let dsn = &dsns[0];
    assert_eq!(dsn["rcpt_tos"], json!(["test@mailserver.foo.com"]));
    let data = dsn["data"].as_str().unwrap();
    assert!(
        data.contains("multipart/report; report-type=delivery-status"),
        "{data}"
    );
    assert!(
        data.contains("Final-Recipient: rfc822;reject@outside.example"),
        "{data}"
    );
    assert!(data.contains("Action: failed"), "{data}");
    assert!(data.contains("Status: 5.1.1"), "{data}");
    assert!(
        data.contains("Diagnostic-Code: smtp; 550 5.1.1 no such user here"),
        "{data}"
    );
    assert!(
        data.contains("X-Marker: original"),
        "the original is returned: {data}"
    );
    // Both failed messages leave the queue; nothing is retried.
    let (ok, out, _) = relay.authrelay(&["queue", "list", "--json"], "");
    assert!(ok);
    assert!(!out.contains("reject"), "{out}");
    assert_eq!(
        rcpt_attempts(&hub_out, "reject@outside.example").len(),
        1,
        "a 550 is not retried"
    );
}

fn seq_of(message: &serde_json::Value) -> Option<u64> {
    message["data"]
        .as_str()?
        .lines()
        .find_map(|l| l.strip_prefix("X-Seq: "))?
        .trim()
        .parse()
        .ok()
}

/// A cheap source of varied kill points (no RNG crate in the harness).
fn jitter_ms(lo: u64, hi: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    lo + nanos % (hi - lo)
}

#[test]
fn no_message_acknowledged_with_250_is_lost_when_relay_queue_is_killed() {
    const COUNT: usize = 200;
    let dir = scratch("rq-kill");
    let redis = Redis::start(&dir);
    let sink = Sink::start(&dir);
    let mut relay = relay_stack(&dir, &redis, sink.addr);
    let plan = json!({"port": relay.submission.port(), "user": "test@mailserver.foo.com",
                      "from": "test@mailserver.foo.com", "to": "burst@outside.example",
                      "count": COUNT});
    let burst = std::thread::spawn(move || {
        Command::new("python3")
            .arg(support("burst.py"))
            .arg(plan.to_string())
            .env("SMTP_PASSWORD", PASSWORD)
            .output()
            .expect("python3 must be installed (scripts/test.sh installs it)")
    });
    // SIGKILL relay-queue at varied points while the burst is being accepted
    // and delivered, then once more after it ends.
    let mut rounds = 0;
    while !burst.is_finished() || rounds < 6 {
        std::thread::sleep(Duration::from_millis(jitter_ms(300, 1500)));
        relay.restart_queue(); // kill() is SIGKILL
        rounds += 1;
        assert!(rounds < 200, "the burst never finished");
    }
    let out = burst.join().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "burst.py: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let accepted: Vec<u64> = report["accepted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert!(
        accepted.len() >= COUNT / 2,
        "most of the burst is accepted despite the kills: {report}"
    );
    let mut seen: HashMap<u64, usize> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        seen.clear();
        for m in sink.messages() {
            if let Some(seq) = seq_of(&m) {
                *seen.entry(seq).or_default() += 1;
            }
        }
        if accepted.iter().all(|s| seen.contains_key(s)) || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let lost: Vec<&u64> = accepted.iter().filter(|s| !seen.contains_key(s)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged messages never arrived: {lost:?}",
        lost.len(),
        accepted.len()
    );
    // Duplicates are possible and expected to be rare: a message whose
    // delivery finished at the hop (250 after the dot) but whose removal from
    // the spool had not yet happened when SIGKILL came is delivered again
    // after the restart — at-least-once, as RFC 5321 §6.1 accepts. Messages
    // that got no 250 (the queue was down mid-DATA) may also arrive, since
    // the spool may have committed just before the kill; they are neither
    // lost nor counted here.
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    let unacknowledged_delivered = seen.keys().filter(|s| !accepted.contains(s)).count();
    println!(
        "nothing lost: {} acknowledged, {} refused during kills, {rounds} SIGKILL rounds, \
         {duplicates} duplicate deliveries, {unacknowledged_delivered} delivered without a 250",
        accepted.len(),
        report["refused"].as_object().map(|o| o.len()).unwrap_or(0)
    );
    assert!(
        duplicates <= rounds,
        "at most one in-flight duplicate per kill: {duplicates} > {rounds}"
    );
}

fn minimal_config(dir: &Path, authinfo: &Path) -> PathBuf {
    let config = dir.join("authrelay.toml");
    std::fs::write(
        &config,
        format!(
            "hostname = \"mailrelay.foo.com\"\ndata_dir = \"{}\"\n\n[relay_queue]\nlisten = \"127.0.0.1:0\"\nauthinfo_file = \"{}\"\n\n{}",
            dir.join("data").display(),
            authinfo.display(),
            tokens_toml(dir)
        ),
    )
    .unwrap();
    config
}

#[test]
fn seed_authinfo_line_is_accepted_and_a_malformed_one_refused_at_start_naming_line_and_field() {
    let dir = scratch("rq-authinfo");
    let authinfo = dir.join("authinfo");
    let config = minimal_config(&dir, &authinfo);

    // Pasted as is from the seed.
    std::fs::write(
        &authinfo,
        "AuthInfo:mailhub.foo.com \"U:mailrelay\" \"I:mailrelay\" \"P:secret\" \"R:foo\" \"M:DIGEST-MD5\"\n",
    )
    .unwrap();
    let (ok, out, err) = run_authrelay(&config, &[], &["config", "check"], "");
    assert!(ok, "config check accepts the seed's line: {out}{err}");
    let mut queue = spawn_service("relay-queue", &config, &dir, &[]);
    queue.addr("grpc");
    wait_for("the AuthInfo map to load", Duration::from_secs(30), || {
        queue.log_text().contains("AuthInfo map loaded")
    });
    queue.kill();

    std::fs::write(
        &authinfo,
        "AuthInfo:mailhub.foo.com \"U:mailrelay\" \"P:secret\"\nAuthInfo:other.foo.com \"U:mailrelay\" \"P:secret\" \"M:DIGEST-MD5 NTLM\"\n",
    )
    .unwrap();
    let (ok, out, err) = run_authrelay(&config, &[], &["config", "check"], "");
    assert!(!ok, "config check refuses: {out}");
    assert!(err.contains("line 2, field M"), "{err}");
    let log = dir.join("relay-queue-bad.log");
    let mut queue = Proc::spawn(
        "relay-queue",
        {
            let mut c = Command::new(bin("relay-queue"));
            c.arg("--config").arg(&config);
            c
        },
        log.clone(),
    );
    let status = queue
        .wait_exit(Duration::from_secs(30))
        .expect("relay-queue exits on a malformed AuthInfo line");
    assert!(!status.success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("line 2, field M"), "{text}");
    assert!(text.contains("NTLM"), "{text}");
    assert!(!text.contains("secret"), "no password in the error: {text}");
}

// ---------------------------------------------------------------------------
// MX routing (RFC 5321 §5.1, RFC 7505) against a real DNS server on loopback.

/// tests/support/dns_zone.py (dnslib) serving `zone`, re-read per query.
fn dns_server(dir: &Path, zone: &serde_json::Value) -> (Proc, std::net::SocketAddr, PathBuf) {
    let file = dir.join("zone.json");
    std::fs::write(&file, zone.to_string()).unwrap();
    let mut cmd = Command::new("python3");
    cmd.arg(support("dns_zone.py")).arg(&file);
    let mut proc = Proc::spawn("dns", cmd, dir.join("dns.log"));
    let line = proc.wait_line("dns listening on");
    let addr = line.rsplit(' ').next().unwrap().parse().unwrap();
    (proc, addr, file)
}

/// tests/support/addr_sink.py: the aiosmtpd sink on `host:port`.
fn sink_at(dir: &Path, name: &str, host: &str, port: u16) -> (Proc, std::net::SocketAddr, PathBuf) {
    let out = dir.join(name);
    let mut cmd = Command::new("python3");
    cmd.arg(support("addr_sink.py"))
        .arg(&out)
        .arg(host)
        .arg(port.to_string());
    let mut proc = Proc::spawn(name, cmd, dir.join(format!("{name}.log")));
    let line = proc.wait_line("sink listening on");
    let addr = line.rsplit(' ').next().unwrap().parse().unwrap();
    (proc, addr, out)
}

fn rcpts_of(dir: &Path) -> Vec<String> {
    json_files(dir)
        .iter()
        .flat_map(|m| m["rcpt_tos"].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

fn queue_entries(stack: &Stack) -> Vec<serde_json::Value> {
    let (ok, out, err) = stack.authrelay(&["queue", "list", "--json"], "");
    assert!(ok, "queue list: {err}");
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn mx_routing_follows_preference_falls_back_to_the_next_mx_and_to_a_and_bounces_null_mx() {
    let dir = scratch("rq-mx");
    let redis = Redis::start(&dir);
    // Two MX hosts on one port at different loopback addresses; 127.0.0.2
    // has nothing listening, so it refuses connections.
    let (_a, a_addr, a_out) = sink_at(&dir, "sink-a", "127.0.0.1", 0);
    let port = a_addr.port();
    let (_b, _, b_out) = sink_at(&dir, "sink-b", "127.0.0.3", port);
    let zone = json!({
        // Listed out of order: the relay sorts by preference.
        "mx-test.example.": {"MX": [[30, "mx3.mx-test.example."], [10, "mx1.mx-test.example."],
                                    [20, "mx2.mx-test.example."]]},
        "mx1.mx-test.example.": {"A": ["127.0.0.2"]},
        "mx2.mx-test.example.": {"A": ["127.0.0.1"]},
        "mx3.mx-test.example.": {"A": ["127.0.0.3"]},
        "pref-test.example.": {"MX": [[20, "mx2.mx-test.example."], [5, "mx3.mx-test.example."]]},
        "a-only.example.": {"A": ["127.0.0.3"]},
        "null-mx.example.": {"MX": [[0, "."]]},
        "flaky.example.": "SERVFAIL",
    });
    let (_dns, dns_addr, zone_file) = dns_server(&dir, &zone);
    let stack = Stack::start(
        &dir,
        &redis,
        StackOptions {
            hostname: "mailrelay.foo.com".into(),
            // No smarthost: every outside domain goes by MX. Only the
            // sender's domain (where DSNs go) has a route, to sink A.
            extra_toml: format!(
                "[relay_queue]\ndns_servers = [\"{dns_addr}\"]\nmx_port = {port}\n\
                 [relay_queue.routes]\n\"mailserver.foo.com\" = \"127.0.0.1:{port}\"\n"
            ),
            ..Default::default()
        },
    );
    stack.add_user("test", "mailserver.foo.com", PASSWORD);
    let from = "test@mailserver.foo.com";
    for to in [
        "user@mx-test.example",
        "pref@pref-test.example",
        "user@a-only.example",
        "user@null-mx.example",
        "user@flaky.example",
    ] {
        submit(&stack, from, to, &format!("Subject: to {to}\r\n\r\nhi\r\n"));
    }
    wait_for(
        "MX deliveries and the null-MX DSN",
        Duration::from_secs(60),
        || rcpts_of(&a_out).len() >= 2 && rcpts_of(&b_out).len() >= 2,
    );
    let logs = stack.queue.log_text();
    // Lowest preference first; mx1 refuses, so mx2 (not mx3) gets it.
    assert!(
        rcpts_of(&a_out).contains(&"user@mx-test.example".to_owned()),
        "mx2 (preference 20) has it: {:?}\n{logs}",
        rcpts_of(&a_out)
    );
    assert!(
        logs.contains(&format!(
            "relay=mx1.mx-test.example[127.0.0.2]:{port}, connect to mx1.mx-test.example:{port}"
        )) && logs.contains("trying the next MX host"),
        "mx1 was tried first and refused: {logs}"
    );
    assert!(
        logs.contains(&format!(
            "to=<user@mx-test.example>, relay=mx2.mx-test.example[127.0.0.1]:{port}, stat=Sent"
        )),
        "{logs}"
    );
    // Preference 5 on 127.0.0.3 beats preference 20 on 127.0.0.1.
    let b = rcpts_of(&b_out);
    assert!(b.contains(&"pref@pref-test.example".to_owned()), "{b:?}");
    // No MX: the domain's own A record (implicit MX).
    assert!(b.contains(&"user@a-only.example".to_owned()), "{b:?}");
    // Null MX: a DSN to the sender, at once, with RFC 7505's 5.1.10.
    let dsn = dsns(&a_out);
    assert_eq!(dsn.len(), 1, "one DSN: {dsn:?}");
    let data = dsn[0]["data"].as_str().unwrap();
    assert_eq!(dsn[0]["rcpt_tos"], json!([from]));
    assert!(
        data.contains("Final-Recipient: rfc822;user@null-mx.example"),
        "{data}"
    );
    assert!(data.contains("Status: 5.1.10"), "{data}");
    assert!(data.contains("null MX"), "{data}");
    // SERVFAIL is temporary: still queued with the DNS error, no DSN …
    let entries = queue_entries(&stack);
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["recipients"], json!(["user@flaky.example"]));
    let err = entries[0]["last_error"].as_str().unwrap();
    assert!(
        err.contains("DNS lookup for flaky.example failed temporarily"),
        "{err}"
    );
    // … and once DNS answers, the retry delivers it.
    let mut fixed = zone.clone();
    fixed["flaky.example."] = json!({"MX": [[10, "mx3.mx-test.example."]]});
    std::fs::write(&zone_file, fixed.to_string()).unwrap();
    wait_for("the retry after SERVFAIL", Duration::from_secs(60), || {
        rcpts_of(&b_out).contains(&"user@flaky.example".to_owned())
    });
    wait_for("an empty queue", Duration::from_secs(30), || {
        queue_entries(&stack).is_empty()
    });
    assert_eq!(dsns(&a_out).len(), 1, "no DSN for the temporary failure");
}

// ---------------------------------------------------------------------------
// relay_queue.tls = "required-verify"

#[test]
fn required_verify_delivers_to_a_hub_whose_certificate_the_ca_file_vouches_for_and_defers_otherwise()
 {
    let dir = scratch("rq-verify");
    let hub_dir = dir.join("hub");
    let relay_dir = dir.join("relay");
    let other_dir = dir.join("other-ca");
    for d in [&hub_dir, &relay_dir, &other_dir] {
        std::fs::create_dir_all(d).unwrap();
    }
    let hub_redis = Redis::start(&hub_dir);
    let relay_redis = Redis::start(&relay_dir);
    let sink = Sink::start(&hub_dir);
    // The harness's self-signed certificate names mailhub.foo.com and localhost.
    let hub = Stack::start(
        &hub_dir,
        &hub_redis,
        StackOptions {
            hostname: "mailhub.foo.com".into(),
            smarthost: Some(sink.addr),
            ..Default::default()
        },
    );
    let hub_cert = hub_dir.join("cert.pem");
    // A certificate for the same names from a different key: the wrong CA.
    let (wrong_ca, _) = test_certificate(&other_dir, "mailhub.foo.com");
    let mut relay = Stack::start(
        &relay_dir,
        &relay_redis,
        StackOptions {
            hostname: "mailrelay.foo.com".into(),
            extra_toml: format!(
                "[relay_queue]\nsmarthost = \"localhost:{}\"\ntls = \"required-verify\"\ntls_ca_file = \"{}\"\n",
                hub.relay.port(),
                wrong_ca.display()
            ),
            ..Default::default()
        },
    );
    relay.add_user("test", "mailserver.foo.com", PASSWORD);
    submit(
        &relay,
        "test@mailserver.foo.com",
        "postmaster@mailhub.foo.com",
        "Subject: verified\r\nX-Marker: tls-verify\r\n\r\nconfidential\r\n",
    );
    wait_for("a certificate error", Duration::from_secs(60), || {
        queue_entries(&relay)
            .first()
            .is_some_and(|e| e["attempts"].as_u64().unwrap_or(0) >= 2)
    });
    let entry = &queue_entries(&relay)[0];
    let err = entry["last_error"].as_str().unwrap();
    assert!(
        err.contains("TLS handshake") && err.to_lowercase().contains("certificate"),
        "deferred with a certificate error: {err}"
    );
    // Never in the clear: the hub saw no transaction, the sink no message.
    let hub_front = hub.frontend.log_text();
    assert!(
        !hub_front.contains("from=<test@mailserver.foo.com>"),
        "{hub_front}"
    );
    assert!(sink.messages().is_empty());
    assert!(dsns(&sink.dir).is_empty());

    // The right CA: the same message goes through, over verified TLS.
    set_queue_env(
        &mut relay,
        &[(
            "AUTHRELAY__RELAY_QUEUE__TLS_CA_FILE",
            hub_cert.display().to_string(),
        )],
    );
    let msgs = sink.wait_messages(1, Duration::from_secs(60));
    assert_eq!(msgs.len(), 1, "relay logs:\n{}", relay.queue.log_text());
    let data = msgs[0]["data"].as_str().unwrap();
    assert!(data.contains("X-Marker: tls-verify"), "{data}");
    // The hub's Received: header records the TLS session it accepted.
    let at = data
        .find("Received: from mailrelay.foo.com ([127.0.0.1])")
        .unwrap_or_else(|| panic!("the hub's Received: header: {data}"));
    assert!(
        data[at..]
            .lines()
            .nth(1)
            .is_some_and(|l| l.contains("(using TLSv1.")),
        "{data}"
    );
}

// ---------------------------------------------------------------------------
// relay_queue.delivery_mode (sendmail's DeliveryMode)

fn scrape(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// A sample's value (`name{labels} value`), 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[test]
fn queue_only_spools_without_delivering_until_flush_etrn_or_a_background_restart() {
    let dir = scratch("rq-queue-only");
    let redis = Redis::start(&dir);
    let sink = Sink::start(&dir);
    let mut relay = Stack::start(
        &dir,
        &redis,
        StackOptions {
            hostname: "mailrelay.foo.com".into(),
            smarthost: Some(sink.addr),
            extra_toml: "[relay_queue]\ndelivery_mode = \"queue-only\"\n".into(),
            ..Default::default()
        },
    );
    relay.add_user("test", "mailserver.foo.com", PASSWORD);
    set_queue_env(
        &mut relay,
        &[("AUTHRELAY__TELEMETRY__METRICS_LISTEN", "127.0.0.1:0".into())],
    );
    let metrics = relay.queue.addr("metrics");
    let before = scrape(metrics);
    let sent = "authrelay_deliveries_total{outcome=\"sent\"}";
    for i in 0..3 {
        submit(
            &relay,
            "test@mailserver.foo.com",
            &format!("q{i}@outside.example"),
            &format!("Subject: q{i}\r\n\r\nq\r\n"),
        );
    }
    // Spooled, counted, ageing — and never attempted.
    wait_for("the queue gauges", Duration::from_secs(30), || {
        let m = scrape(metrics);
        sample(&m, "authrelay_queue_messages") == 3.0
            && sample(&m, "authrelay_queue_oldest_age_seconds") >= 2.0
    });
    let entries = queue_entries(&relay);
    assert_eq!(entries.len(), 3);
    assert!(
        entries.iter().all(|e| e["attempts"] == 0),
        "queue-only makes no attempt: {entries:?}"
    );
    assert!(sink.messages().is_empty());
    // A restart in queue-only keeps them waiting.
    relay.restart_queue();
    let metrics = relay.queue.addr("metrics");
    wait_for("the recovered gauge", Duration::from_secs(30), || {
        sample(&scrape(metrics), "authrelay_queue_messages") == 3.0
    });
    assert!(queue_entries(&relay).iter().all(|e| e["attempts"] == 0));
    assert!(sink.messages().is_empty());

    // `authrelay queue flush` delivers them.
    let (ok, out, err) = relay.authrelay(&["queue", "flush"], "");
    assert!(ok, "{out}{err}");
    assert_eq!(sink.wait_messages(3, Duration::from_secs(60)).len(), 3);
    wait_for("the gauges to drop", Duration::from_secs(30), || {
        let m = scrape(metrics);
        sample(&m, "authrelay_queue_messages") == 0.0
            && sample(&m, "authrelay_queue_oldest_age_seconds") == 0.0
    });
    let after = scrape(metrics);
    // The counter restarted with the process: the three are all this one's.
    assert_eq!(sample(&after, sent), 3.0, "{after}");
    assert!(sample(&before, sent) == 0.0);

    // ETRN (RFC 1985) on the frontend flushes too.
    submit(
        &relay,
        "test@mailserver.foo.com",
        "etrn@outside.example",
        "Subject: etrn\r\n\r\ne\r\n",
    );
    wait_for("the fourth message queued", Duration::from_secs(30), || {
        queue_entries(&relay).len() == 1
    });
    assert_eq!(queue_entries(&relay)[0]["attempts"], 0);
    let mut c = Raw::connect(relay.relay);
    c.cmd("EHLO client.example");
    let (code, text) = c.cmd("ETRN outside.example");
    assert_eq!(code, 250, "{text}");
    c.cmd("QUIT");
    assert_eq!(sink.wait_messages(4, Duration::from_secs(60)).len(), 4);

    // A restart in background mode delivers what queue-only left.
    submit(
        &relay,
        "test@mailserver.foo.com",
        "later@outside.example",
        "Subject: later\r\n\r\nl\r\n",
    );
    wait_for("the fifth message queued", Duration::from_secs(30), || {
        queue_entries(&relay).len() == 1
    });
    set_queue_env(
        &mut relay,
        &[("AUTHRELAY__RELAY_QUEUE__DELIVERY_MODE", "background".into())],
    );
    assert_eq!(sink.wait_messages(5, Duration::from_secs(60)).len(), 5);
    let rcpts = rcpts_of(&sink.dir);
    for to in [
        "q0@outside.example",
        "q1@outside.example",
        "q2@outside.example",
        "etrn@outside.example",
        "later@outside.example",
    ] {
        assert_eq!(
            rcpts.iter().filter(|r| *r == to).count(),
            1,
            "{to} once: {rcpts:?}"
        );
    }
}

/// Two relay-queue replicas, each with its own spool, behind one
/// `endpoints.relay_queue`: `queue list` shows both and names each, `hold`
/// finds the message on whichever replica has it, an unknown id is refused,
/// and a replica that is down is reported (and fails the command) after the
/// other has answered.
#[test]
fn queue_commands_reach_every_relay_queue_replica() {
    let dir = scratch("rq-replicas");
    let redis = Redis::start(&dir);
    // A next hop that refuses connections: messages stay queued.
    let hop = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let stack = relay_stack(&dir, &redis, hop);
    let q1 = stack.queue_addr;
    // Replica 2, with a spool of its own, and a frontend that queues there.
    let data2 = dir.join("replica2");
    std::fs::create_dir_all(&data2).unwrap();
    let mut env2 = stack.endpoints.clone();
    env2.push((
        "AUTHRELAY__RELAY_QUEUE__LISTEN".into(),
        "127.0.0.1:0".into(),
    ));
    env2.push(("AUTHRELAY__DATA_DIR".into(), data2.display().to_string()));
    let mut queue2 = spawn_service("relay-queue", &stack.config, &data2, &env2);
    let q2 = queue2.addr("grpc");
    env2.retain(|(k, _)| k != "AUTHRELAY__ENDPOINTS__RELAY_QUEUE");
    env2.push((
        "AUTHRELAY__ENDPOINTS__RELAY_QUEUE".into(),
        format!("http://{q2}"),
    ));
    let mut frontend2 = spawn_service("smtp-frontend", &stack.config, &data2, &env2);
    let submission2 = frontend2.addr("smtp submission");
    submit(
        &stack,
        "test@mailserver.foo.com",
        "one@outside.example",
        "Subject: 1\r\n\r\n1\r\n",
    );
    let res = smtplib(
        json!({"port": submission2.port(), "starttls": true, "mech": "PLAIN",
               "user": "test@mailserver.foo.com", "from": "test@mailserver.foo.com",
               "to": ["two@outside.example"], "body": "Subject: 2\r\n\r\n2\r\n"}),
        PASSWORD,
    );
    assert_eq!(res["send"]["ok"], true, "{res}");

    // The admin CLI with both replicas configured.
    let mut both = stack.endpoints.clone();
    both.retain(|(k, _)| k != "AUTHRELAY__ENDPOINTS__RELAY_QUEUE");
    both.push((
        "AUTHRELAY__ENDPOINTS__RELAY_QUEUE".into(),
        format!("http://{q1},http://{q2}"),
    ));
    let cli = |args: &[&str]| run_authrelay(&stack.config, &both, args, "");
    let list = || -> Vec<serde_json::Value> {
        let (ok, out, err) = cli(&["queue", "list", "--json"]);
        assert!(ok, "{err}");
        out.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let entries = list();
    assert_eq!(entries.len(), 2, "{entries:?}");
    let on = |rcpt: &str| {
        entries
            .iter()
            .find(|e| e["recipients"][0] == rcpt)
            .unwrap_or_else(|| panic!("{rcpt} not listed: {entries:?}"))
            .clone()
    };
    assert_eq!(on("one@outside.example")["replica"], q1.to_string());
    assert_eq!(on("two@outside.example")["replica"], q2.to_string());
    let (ok, text, _) = cli(&["queue", "list"]);
    assert!(ok && text.contains(&format!("replica={q2}")), "{text}");

    // Held where it is, on replica 2.
    let id2 = on("two@outside.example")["id"].as_str().unwrap().to_owned();
    let (ok, out, err) = cli(&["queue", "hold", &id2]);
    assert!(ok && out.contains("held"), "{out}{err}");
    assert!(
        list()
            .iter()
            .any(|e| e["id"] == id2.as_str() && e["held"] == true)
    );
    let (ok, _, err) = cli(&["queue", "delete", "0000000000000000"]);
    assert!(!ok && err.contains("no such message"), "{err}");

    // Replica 2 down: replica 1's message is still listed, and the command
    // fails naming the replica that did not answer.
    queue2.kill();
    let (ok, out, err) = cli(&["queue", "list", "--json"]);
    assert!(!ok, "a replica down went unnoticed: {out}");
    assert!(out.contains("one@outside.example"), "{out}");
    assert!(err.contains(&q2.to_string()), "{err}");
    frontend2.kill();
}
