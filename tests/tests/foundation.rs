//! Foundation: one authenticated message end to end, through the four
//! services as separate processes, a real Redis, Python's smtplib as the
//! client and aiosmtpd as the next hop.

use std::time::Duration;

use authrelay_e2e::*;
use serde_json::json;

const PASSWORD: &str = "tanstaaf-Secret-42";

fn stack_with_sink(name: &str) -> (std::path::PathBuf, Redis, Sink, Stack) {
    let dir = scratch(name);
    let redis = Redis::start(&dir);
    let sink = Sink::start(&dir);
    let stack = Stack::start(
        &dir,
        &redis,
        StackOptions {
            smarthost: Some(sink.addr),
            ..Default::default()
        },
    );
    stack.add_user("test", "mailserver.foo.com", PASSWORD);
    (dir, redis, sink, stack)
}

#[test]
fn smtplib_plain_and_login_relay_to_the_sink_with_received_naming_the_user() {
    let (_dir, _redis, sink, stack) = stack_with_sink("plain-login");
    for (i, mech) in ["PLAIN", "LOGIN"].iter().enumerate() {
        let body = format!(
            "Subject: hello {mech}\r\nX-Test: {i}\r\n\r\nline one\r\n.leading dot\r\nlast line\r\n"
        );
        let res = smtplib(
            json!({"port": stack.submission.port(), "starttls": true, "mech": mech,
                   "user": "test@mailserver.foo.com", "from": "test@mailserver.foo.com",
                   "to": [format!("friend{i}@outside.example")], "body": body}),
            PASSWORD,
        );
        assert_eq!(res["auth"][0], 235, "{mech}: {res}");
        assert_eq!(res["send"]["ok"], true, "{mech}: {res}");
    }
    let msgs = sink.wait_messages(2, Duration::from_secs(20));
    assert_eq!(
        msgs.len(),
        2,
        "both messages reach the sink; logs:\n{}",
        stack.logs()
    );
    for m in &msgs {
        let data = m["data"].as_str().unwrap();
        assert!(data.starts_with("Received: from client.example"), "{data}");
        assert!(
            data.contains("(authenticated as test@mailserver.foo.com with "),
            "{data}"
        );
        assert!(
            data.contains("by mailserver.foo.com (authrelay) with ESMTPSA id "),
            "{data}"
        );
        // Body intact, dot-stuffing undone end to end.
        assert!(
            data.contains("\r\n\r\nline one\r\n.leading dot\r\nlast line\r\n"),
            "{data}"
        );
    }
    let logs = stack.logs();
    assert!(
        logs.contains(
            "AUTH=server, relay=[127.0.0.1], authid=test@mailserver.foo.com, mech=PLAIN, bits=0"
        ),
        "{logs}"
    );
    assert!(logs.contains("mech=LOGIN, bits=0"), "{logs}");
    assert!(!logs.contains(PASSWORD), "a password reached a log");
}

#[test]
fn plain_without_initial_response_and_bare_name_in_default_realm() {
    let (_dir, _redis, _sink, stack) = stack_with_sink("plain-no-ir");
    let res = smtplib(
        json!({"port": stack.submission.port(), "starttls": true, "mech": "PLAIN", "initial_response": false,
               "user": "test"}),
        PASSWORD,
    );
    assert_eq!(res["auth"][0], 235, "{res}");
}

#[test]
fn wrong_password_and_unknown_user_get_535_and_the_same_log_shape() {
    let (_dir, _redis, _sink, stack) = stack_with_sink("wrong-pw");
    for user in ["test@mailserver.foo.com", "nobody@mailserver.foo.com"] {
        let res = smtplib(
            json!({"port": stack.submission.port(), "starttls": true, "mech": "PLAIN", "user": user}),
            "not-the-password",
        );
        assert_eq!(res["auth"][0], 535, "{user}: {res}");
        assert!(
            res["auth"][1].as_str().unwrap().starts_with("5.7.8"),
            "{res}"
        );
    }
    let logs = stack.frontend.log_text();
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("AUTH failure (PLAIN)"))
        .collect();
    assert_eq!(lines.len(), 2, "{logs}");
    // The same line but for the user: an unknown one appears only as a
    // hash (a password typed as the user name must not reach the log).
    let shape = |l: &str| {
        let tail = l.split("AUTH failure").nth(1).unwrap().to_owned();
        let (head, authid) = tail.split_once("authid=").unwrap();
        let who = authid.split([',', ' ']).next().unwrap();
        format!("{head}authid=X{}", &authid[who.len()..])
    };
    assert!(
        lines
            .iter()
            .any(|l| l.contains("authid=test@mailserver.foo.com")),
        "{logs}"
    );
    assert!(
        lines.iter().any(|l| l.contains("authid=unknown:")) && !logs.contains("nobody@"),
        "an unknown user is logged as a hash: {logs}"
    );
    assert_eq!(
        shape(lines[0]),
        shape(lines[1]),
        "unknown user and wrong password must log alike"
    );
    assert!(!logs.contains("not-the-password"));
}

#[test]
fn relaying_without_auth_is_550_and_local_mail_is_accepted() {
    let (_dir, _redis, _sink, stack) = stack_with_sink("no-relay");
    let mut c = Raw::connect(stack.relay);
    assert_eq!(c.cmd("EHLO client.example").0, 250);
    assert_eq!(c.cmd("MAIL FROM:<someone@outside.example>").0, 250);
    let (code, text) = c.cmd("RCPT TO:<victim@elsewhere.example>");
    assert_eq!(code, 550, "{text}");
    assert!(text.contains("5.7.1"), "{text}");
    // Local domain: accepted without AUTH.
    assert_eq!(c.cmd("RCPT TO:<test@mailserver.foo.com>").0, 250);
    // Submission requires AUTH before MAIL.
    let mut s = Raw::connect(stack.submission);
    assert_eq!(s.cmd("EHLO client.example").0, 250);
    let (code, text) = s.cmd("MAIL FROM:<a@b.example>");
    assert_eq!(code, 530, "{text}");
}

#[test]
fn redis_stopped_mid_test_auth_answers_454_never_235() {
    let (_dir, mut redis, _sink, stack) = stack_with_sink("redis-down");
    // A multi-step mechanism keeps its exchange in Redis.
    let ok = smtplib(
        json!({"port": stack.submission.port(), "starttls": true, "mech": "CRAM-MD5", "user": "test@mailserver.foo.com"}),
        PASSWORD,
    );
    assert_eq!(ok["auth"][0], 235, "{ok}");
    redis.stop();
    for mech in ["CRAM-MD5", "PLAIN", "LOGIN"] {
        let res = smtplib(
            json!({"port": stack.submission.port(), "starttls": true, "mech": mech, "user": "test@mailserver.foo.com"}),
            PASSWORD,
        );
        assert_eq!(res["auth"][0], 454, "{mech} with Redis down: {res}");
        assert!(
            res["auth"][1].as_str().unwrap().starts_with("4.7.0"),
            "{res}"
        );
    }
}

#[test]
fn relay_queue_stopped_end_of_data_is_451_and_the_client_can_retry() {
    let (_dir, _redis, sink, mut stack) = stack_with_sink("queue-down");
    stack.queue.kill();
    let plan = json!({"port": stack.submission.port(), "starttls": true, "mech": "PLAIN",
                      "user": "test@mailserver.foo.com", "from": "test@mailserver.foo.com",
                      "to": ["x@outside.example"], "body": "Subject: retry\r\n\r\nbody\r\n"});
    let res = smtplib(plan.clone(), PASSWORD);
    assert_eq!(res["send"]["code"], 451, "{res}");
    assert!(
        res["send"]["error"].as_str().unwrap().starts_with("4.3.0"),
        "{res}"
    );
    stack.restart_queue();
    // Lazy channels reconnect on their own: the retry goes through.
    let mut last = serde_json::Value::Null;
    for _ in 0..20 {
        last = smtplib(plan.clone(), PASSWORD);
        if last["send"]["ok"] == true {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(last["send"]["ok"], true, "{last}");
    assert_eq!(sink.wait_messages(1, Duration::from_secs(20)).len(), 1);
}

#[test]
fn user_list_prints_sasldblistusers_lines() {
    let (_dir, _redis, _sink, stack) = stack_with_sink("user-list");
    let (ok, out, err) = stack.authrelay(&["user", "list"], "");
    assert!(ok, "{err}");
    assert!(
        out.contains("user: test realm: mailserver.foo.com mech: CRAM-MD5\n"),
        "{out}"
    );
    assert!(
        out.contains("user: test realm: mailserver.foo.com mech: PLAIN\n"),
        "{out}"
    );
    let (ok, _, err) = stack.authrelay(
        &["user", "add", "--realm", "mailserver.foo.com", "test"],
        "other\n",
    );
    assert!(!ok, "add of an existing user must fail");
    assert!(err.contains("exists"), "{err}");
    let (ok, _, err) = stack.authrelay(
        &["user", "delete", "--realm", "mailserver.foo.com", "test"],
        "",
    );
    assert!(ok, "{err}");
    let (_, out, _) = stack.authrelay(&["user", "list"], "");
    assert!(!out.contains("user: test "), "{out}");
}

#[test]
fn bad_configuration_is_refused_naming_key_value_and_why() {
    let dir = scratch("bad-config");
    let cfg = dir.join("bad.toml");
    std::fs::write(&cfg, "[sasl]\nmechanisms = [\"PLAIN\", \"NTLM\"]\n").unwrap();
    let (ok, _, err) = run_authrelay(&cfg, &[], &["config", "check"], "");
    assert!(!ok);
    assert!(
        err.contains("sasl.mechanisms")
            && err.contains("NTLM")
            && err.contains("unknown SASL mechanism"),
        "{err}"
    );
    std::fs::write(&cfg, "[sasl]\nmechanisms = \"DIGEST-MD5 CRAM-MD5 LOGIN\"\ntrusted = \"DIGEST-MD5 CRAM-MD5 LOGIN\"\n").unwrap();
    let (ok, out, err) = run_authrelay(&cfg, &[], &["config", "check"], "");
    assert!(ok, "{err}");
    assert!(
        out.contains("offered (confAUTH_MECHANISMS):      DIGEST-MD5 CRAM-MD5 LOGIN"),
        "{out}"
    );
}

/// The README's quick start, as written: `authrelay serve` with no arguments
/// in an empty directory, a user added with `authrelay user add`, and a
/// message from smtplib over STARTTLS on port 2587.
#[test]
fn quick_start_serve_with_no_arguments_accepts_an_authenticated_message() {
    let dir = scratch("quickstart");
    let mut cmd = std::process::Command::new(bin("authrelay"));
    cmd.arg("serve")
        .current_dir(&dir)
        .env_remove("XDG_DATA_HOME")
        .env("RUST_LOG", "info");
    let mut serve = Proc::spawn("authrelay serve", cmd, dir.join("serve.log"));
    serve.wait_line("(smtp submission)");
    let mut add = std::process::Command::new(bin("authrelay"))
        .args(["user", "add", "--realm", "example.org", "alice"])
        .current_dir(&dir)
        .stdin(std::process::Stdio::piped())
        .output_with_stdin("s3cret-alice\n");
    assert!(
        add.status.success(),
        "{}",
        String::from_utf8_lossy(&add.stderr)
    );
    add.stdout.clear();
    let res = smtplib(
        json!({"port": 2587, "starttls": true, "mech": "PLAIN", "user": "alice@example.org",
               "from": "alice@example.org", "to": ["bob@example.net"]}),
        "s3cret-alice",
    );
    assert_eq!(res["auth"][0], 235, "{res}\n{}", serve.log_text());
    assert_eq!(res["send"]["ok"], true, "{res}");
    assert!(dir.join("authrelay-data/credentials.redb").exists());
    serve.signal("TERM");
    assert!(
        serve.wait_exit(Duration::from_secs(15)).is_some(),
        "serve must stop on SIGTERM"
    );
}

trait OutputWithStdin {
    fn output_with_stdin(&mut self, input: &str) -> std::process::Output;
}

impl OutputWithStdin for std::process::Command {
    fn output_with_stdin(&mut self, input: &str) -> std::process::Output {
        use std::io::Write;
        let mut child = self
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }
}

/// The verified-credential cache (sasl.verified_cache_ttl) may skip Argon2
/// for a password it verified before, but never for an old one: a password
/// change must take effect at once.
#[test]
fn a_changed_password_is_not_served_from_the_verified_credential_cache() {
    let (_dir, _redis, _sink, stack) = stack_with_sink("verified-cache");
    let login = |pw: &str| {
        smtplib(json!({"port": stack.submission.port(), "starttls": true, "mech": "PLAIN", "user": "test@mailserver.foo.com"}), pw)["auth"][0]
            .as_u64()
            .unwrap()
    };
    assert_eq!(login(PASSWORD), 235);
    assert_eq!(login(PASSWORD), 235, "second login, from the cache");
    let (ok, _, err) = stack.authrelay(
        &["user", "passwd", "--realm", "mailserver.foo.com", "test"],
        "brand-new-Password-1\n",
    );
    assert!(ok, "{err}");
    assert_eq!(
        login(PASSWORD),
        535,
        "the old password must fail right after the change"
    );
    assert_eq!(login("brand-new-Password-1"), 235);
    assert_eq!(login("wrong"), 535);
}
