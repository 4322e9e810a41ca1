//! Stolen-account limits (issue 21, part 3): messages and recipients per
//! account, counted in one Redis by two frontends; per-account overrides;
//! the hard threshold that suspends an account cluster-wide (its sessions
//! on the other frontend closed with 421, AUTH refused 525 5.7.13 on both,
//! a metric and a WARN line), and `authrelay user unlock`. The same in
//! `authrelay serve` with its in-process store. The SMTP client is Python's
//! smtplib (tests/support/smtp_steps.py).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use authrelay_e2e::*;
use serde_json::{Value, json};

const PASSWORD: &str = "limits-Secret-9";
const REALM: &str = "mailserver.foo.com";

/// One smtplib session following `steps`, its replies read as they come.
struct Session {
    child: Child,
    lines: mpsc::Receiver<Value>,
}

impl Session {
    fn start(port: u16, user: &str, steps: Value) -> Session {
        let mut child = Command::new("python3")
            .arg(support("smtp_steps.py"))
            .arg(json!({"port": port, "user": user, "steps": steps}).to_string())
            .env("SMTP_PASSWORD", PASSWORD)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 must be installed (scripts/test.sh installs it)");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        Session { child, lines }
    }

    /// The next reply (step, code, text).
    fn next(&mut self) -> (String, i64, String) {
        match self.lines.recv_timeout(Duration::from_secs(40)) {
            Ok(v) => (
                v["step"].as_str().unwrap_or("").to_owned(),
                v["code"].as_i64().unwrap_or(0),
                v["text"].as_str().unwrap_or("").to_owned(),
            ),
            Err(_) => {
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = self.child.kill();
                    let _ = e.read_to_string(&mut err);
                }
                panic!("smtp_steps.py said nothing more; stderr:\n{err}")
            }
        }
    }

    /// Every reply until the end, as (step, code, text).
    fn all(mut self) -> Vec<(String, i64, String)> {
        let mut out = Vec::new();
        loop {
            let r = self.next();
            if r.0 == "end" {
                let _ = self.child.wait();
                return out;
            }
            out.push(r);
        }
    }
}

/// Run `steps` as `user` to the end.
fn run(port: u16, user: &str, steps: Value) -> Vec<(String, i64, String)> {
    Session::start(port, user, steps).all()
}

fn codes(replies: &[(String, i64, String)]) -> Vec<i64> {
    replies.iter().map(|r| r.1).collect()
}

/// One message: MAIL, RCPT, DATA.
fn message(from: &str, to: &str) -> Vec<Value> {
    vec![
        json!(["mail", from]),
        json!(["rcpt", to]),
        json!(["data", "Subject: limits\r\n\r\nhello\r\n"]),
    ]
}

fn scrape(addr: SocketAddr) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// A stack whose frontend (A) and a second frontend (B) share one Redis.
fn two_frontends(name: &str, limits: &str) -> (Redis, Sink, Stack, Proc, SocketAddr) {
    let extra = format!("[telemetry]\nmetrics_listen = \"127.0.0.1:0\"\n{limits}");
    let (_dir, redis, sink, stack) = standard_stack(name, &extra, PASSWORD);
    let (b, b_sub, _) = stack.spawn_frontend("smtp-frontend-b");
    (redis, sink, stack, b, b_sub)
}

/// `authrelay ARGS` against the stack, the frontend admin API at `admin`.
fn cli(stack: &Stack, admin: SocketAddr, args: &[&str]) -> (bool, String, String) {
    let mut env = stack.endpoints.clone();
    env.push((
        "AUTHRELAY__ENDPOINTS__FRONTEND".to_owned(),
        format!("http://{admin}"),
    ));
    run_authrelay(&stack.config, &env, args, "")
}

#[test]
fn messages_and_recipients_per_hour_are_counted_across_two_frontends() {
    let (_redis, _sink, mut stack, mut b, b_sub) = two_frontends(
        "limits-shared",
        "[limits.per_user]\nmessages_per_hour = 3\nrecipients_per_hour = 4\nsuspend_factor = 0\n",
    );
    stack.add_user("alice", REALM, PASSWORD);
    stack.add_user("bob", REALM, PASSWORD);
    let (a, alice, bob) = (
        stack.submission.port(),
        format!("alice@{REALM}"),
        format!("bob@{REALM}"),
    );

    // Three messages on A: all accepted.
    let mut steps = Vec::new();
    for _ in 0..3 {
        steps.extend(message(&alice, "x@outside.example"));
    }
    let r = run(a, &alice, json!(steps));
    assert_eq!(
        codes(&r),
        [235, 250, 250, 250, 250, 250, 250, 250, 250, 250],
        "{r:?}"
    );
    // The fourth, on B: the account's count is shared.
    let r = run(b_sub.port(), &alice, json!([["mail", alice]]));
    assert_eq!(r[1].1, 450, "{r:?}");
    assert!(r[1].2.starts_with("4.7.1 "), "{r:?}");
    assert!(r[1].2.contains("messages_per_hour"), "{r:?}");
    // Still refused on A: a refused attempt gives nothing back by itself.
    let r = run(a, &alice, json!([["mail", alice]]));
    assert_eq!(r[1].1, 450, "{r:?}");

    // Recipients: four on A, the fifth (on B) is 452 4.7.1; the message
    // still goes to the four accepted before it.
    let r = run(
        a,
        &bob,
        json!([
            ["mail", bob],
            ["rcpt", "r1@outside.example"],
            ["rcpt", "r2@outside.example"],
            ["rcpt", "r3@outside.example"],
            ["rcpt", "r4@outside.example"],
            ["rset"]
        ]),
    );
    assert_eq!(codes(&r), [235, 250, 250, 250, 250, 250, 250], "{r:?}");
    let r = run(
        b_sub.port(),
        &bob,
        json!([["mail", bob], ["rcpt", "r5@outside.example"]]),
    );
    assert_eq!(r[2].1, 452, "{r:?}");
    assert!(
        r[2].2.starts_with("4.7.1 ") && r[2].2.contains("recipients_per_hour"),
        "{r:?}"
    );

    // Another account is not touched by alice's count.
    let r = run(
        a,
        &format!("test@{REALM}"),
        json!(message("test@mailserver.foo.com", "x@outside.example")),
    );
    assert_eq!(codes(&r), [235, 250, 250, 250], "{r:?}");

    // An override raises alice's limit at once, on every frontend…
    let admin_a = stack.frontend_admin();
    let (ok, out, err) = cli(
        &stack,
        admin_a,
        &[
            "user",
            "limit",
            "--realm",
            REALM,
            "alice",
            "--messages-per-hour",
            "5",
        ],
    );
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("messages_per_hour: 5 (this user's) used: 3"),
        "{out}"
    );
    let r = run(b_sub.port(), &alice, json!([["mail", alice]]));
    assert_eq!(r[1].1, 250, "{r:?}");
    // …and lowers it as well.
    let (ok, out, err) = cli(
        &stack,
        admin_a,
        &["user", "limit", "alice", "--messages-per-hour", "1"],
    );
    assert!(ok, "{out}{err}");
    let r = run(a, &alice, json!([["mail", alice]]));
    assert_eq!(r[1].1, 450, "{r:?}");
    // --show, as JSON; --clear goes back to the configuration.
    let (ok, out, err) = cli(
        &stack,
        admin_a,
        &["user", "limit", "alice", "--show", "--json"],
    );
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    let w = &v["windows"][0];
    assert_eq!(
        (
            w["name"].as_str(),
            w["limit"].as_u64(),
            w["overridden"].as_bool()
        ),
        (Some("messages_per_hour"), Some(1), Some(true)),
        "{v}"
    );
    assert_eq!(w["used"].as_u64(), Some(4), "{v}");
    assert_eq!(v["suspended"], false, "{v}");
    let (ok, out, err) = cli(&stack, admin_a, &["user", "limit", "alice", "--clear"]);
    assert!(ok, "{err}");
    assert!(out.contains("messages_per_hour: 3 used: 4"), "{out}");
    let (ok, _, err) = cli(
        &stack,
        admin_a,
        &["user", "limit", "alice", "--clear", "--show"],
    );
    assert!(!ok && err.contains("cannot be used with"), "{err}");

    // The log says who hit which limit, in the seed's key=value style.
    let log = stack.frontend.log_text() + &b.log_text();
    assert!(
        log.contains(&format!(
            "limit exceeded: authid={alice}, relay=[127.0.0.1], limit=messages_per_hour, used=3/3"
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "account limits changed: authid={alice}, messages_per_hour=5"
        )),
        "{log}"
    );
    let m = scrape(b.addr("metrics"));
    assert!(
        sample(
            &m,
            "authrelay_account_limit_refusals_total{limit=\"recipients_per_hour\"}"
        ) >= 1.0,
        "{m}"
    );
}

#[test]
fn crossing_the_hard_threshold_suspends_the_account_on_every_frontend() {
    let (_redis, _sink, mut stack, mut b, b_sub) = two_frontends(
        "limits-suspend",
        "[limits.per_user]\nmessages_per_hour = 2\nsuspend_factor = 2\n",
    );
    stack.add_user("carol", REALM, PASSWORD);
    stack.add_user("dave", REALM, PASSWORD);
    let (a, carol, dave) = (
        stack.submission.port(),
        format!("carol@{REALM}"),
        format!("dave@{REALM}"),
    );

    // Carol and Dave each hold an authenticated session open on B.
    let mut held = Session::start(b_sub.port(), &carol, json!([["wait", 30]]));
    let mut other = Session::start(b_sub.port(), &dave, json!([["wait", 6]]));
    assert_eq!(held.next().1, 235);
    assert_eq!(other.next().1, 235);

    // On A: two messages pass, two are refused (attempts 3 and 4 of 2 × 2),
    // the fifth attempt crosses the threshold: 421 and the connection closes.
    let r = run(
        a,
        &carol,
        json!([
            ["mail", carol],
            ["rset"],
            ["mail", carol],
            ["rset"],
            ["mail", carol],
            ["mail", carol],
            ["mail", carol],
            ["noop"]
        ]),
    );
    assert_eq!(
        codes(&r),
        [235, 250, 250, 250, 250, 450, 450, 421, -1],
        "{r:?}"
    );
    assert!(
        r[7].2.starts_with("4.7.1 ") && r[7].2.contains("suspended"),
        "{r:?}"
    );

    // The session on the other frontend is closed with 421, unasked…
    let (step, code, text) = held.next();
    assert_eq!((step.as_str(), code), ("wait", 421), "{text}");
    assert!(text.contains("Account suspended"), "{text}");
    // …and another account's session there is not.
    let (step, code, _) = other.next();
    assert_eq!(
        (step.as_str(), code),
        ("wait", 0),
        "dave's session must stay open"
    );

    // AUTH is refused on both frontends: 525 5.7.13, only after the
    // password was proved (a wrong one is still 535).
    for port in [a, b_sub.port()] {
        let r = run(port, &carol, json!([]));
        assert_eq!(r[0].1, 525, "{r:?}");
        assert!(r[0].2.starts_with("5.7.13 "), "{r:?}");
    }
    let wrong = Command::new("python3")
        .arg(support("smtp_steps.py"))
        .arg(json!({"port": a, "user": carol, "steps": []}).to_string())
        .env("SMTP_PASSWORD", "not-the-password")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&wrong.stdout).contains("\"code\": 535"));

    // The alert: a WARN line on A, the close on B, the metrics.
    let log_a = stack.frontend.log_text();
    assert!(
        log_a.contains(&format!("account suspended: authid={carol}, relay=[127.0.0.1], limit=messages_per_hour, attempts=5, threshold=4")),
        "{log_a}"
    );
    assert!(log_a.contains(" WARN "), "{log_a}");
    assert!(
        log_a.contains(&format!(
            "AUTH failure (PLAIN): account suspended, relay=[127.0.0.1], authid={carol}"
        )),
        "{log_a}"
    );
    assert!(
        b.log_text().contains(&format!(
            "sessions closed: account suspended, authid={carol}, sessions=1"
        )),
        "{}",
        b.log_text()
    );
    let m = scrape(stack.frontend.addr("metrics"));
    assert_eq!(
        sample(&m, "authrelay_account_suspensions_total"),
        1.0,
        "{m}"
    );
    let m = scrape(b.addr("metrics"));
    assert_eq!(sample(&m, "authrelay_accounts_suspended"), 1.0, "{m}");

    // The admin tools show it.
    let admin_a = stack.frontend_admin();
    let (ok, out, err) = cli(&stack, admin_a, &["user", "list"]);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("user: carol realm: {REALM} suspended: since ")),
        "{out}"
    );
    assert!(
        !out.contains("user: dave realm: mailserver.foo.com suspended"),
        "{out}"
    );
    let (ok, out, _) = cli(
        &stack,
        admin_a,
        &["user", "show", "--realm", REALM, "carol"],
    );
    assert!(
        ok && out.contains("suspended: since ") && out.contains("suspend at: 4"),
        "{out}"
    );

    // It survives a frontend restart (it lives in the shared store).
    b.kill();
    let (_b2, b2_sub, _) = stack.spawn_frontend("smtp-frontend-b2");
    let r = run(b2_sub.port(), &carol, json!([]));
    assert_eq!(r[0].1, 525, "{r:?}");

    // Unlock restores the account and starts its counts afresh.
    let (ok, out, err) = cli(
        &stack,
        admin_a,
        &["user", "unlock", "--realm", REALM, "carol"],
    );
    assert!(ok, "{err}");
    assert!(out.contains("suspension lifted"), "{out}");
    for port in [a, b2_sub.port()] {
        let r = run(port, &carol, json!([["mail", carol]]));
        assert_eq!(codes(&r), [235, 250], "{r:?}");
    }
    assert!(stack.frontend.log_text().contains(&format!(
        "account unlocked: authid={carol}, was_suspended=true"
    )));
    let (_, out, _) = cli(&stack, admin_a, &["user", "list"]);
    assert!(!out.contains("suspended"), "{out}");
}

#[test]
fn limits_work_in_authrelay_serve_without_redis() {
    let dir = scratch("limits-serve");
    let config = dir.join("authrelay.toml");
    std::fs::write(
        &config,
        format!(
            "hostname = \"mail.example.org\"\ndefault_realm = \"example.org\"\ndata_dir = \"{}\"\n\
             [credential_store]\nargon2_memory_kib = 8192\nargon2_iterations = 1\n\
             [[frontend.listeners]]\naddress = \"127.0.0.1:0\"\nrole = \"submission\"\n\
             [limits.per_user]\nmessages_per_hour = 1\nsuspend_factor = 2\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(bin("authrelay"));
    cmd.arg("--config")
        .arg(&config)
        .arg("serve")
        .env("RUST_LOG", "info");
    let mut serve = Proc::spawn("authrelay serve", cmd, dir.join("serve.log"));
    let port = serve.addr("smtp submission").port();
    let (ok, _, err) = run_authrelay(
        &config,
        &[],
        &["user", "add", "erin"],
        &format!("{PASSWORD}\n"),
    );
    assert!(ok, "{err}");
    let erin = "erin@example.org";

    let mut held = Session::start(port, erin, json!([["wait", 30]]));
    assert_eq!(held.next().1, 235);
    let r = run(
        port,
        erin,
        json!([["mail", erin], ["rset"], ["mail", erin], ["mail", erin]]),
    );
    assert_eq!(codes(&r), [235, 250, 250, 450, 421], "{r:?}");
    assert_eq!(held.next().1, 421, "the held session is closed too");
    let r = run(port, erin, json!([]));
    assert_eq!(r[0].1, 525, "{r:?}\n{}", serve.log_text());
    let (ok, _, err) = run_authrelay(
        &config,
        &[],
        &["user", "limit", "erin", "--recipients-per-day", "7"],
        "",
    );
    assert!(ok, "{err}");

    // A restart of the process keeps the suspension and the override: they
    // are saved in the data directory, readable by the owner only.
    serve.signal("TERM");
    assert!(serve.wait_exit(Duration::from_secs(15)).is_some());
    let saved = dir.join("data/account-limits.json");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&saved).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", saved.display());
    }
    let mut cmd = Command::new(bin("authrelay"));
    cmd.arg("--config")
        .arg(&config)
        .arg("serve")
        .env("RUST_LOG", "info");
    let mut serve = Proc::spawn("authrelay serve", cmd, dir.join("serve2.log"));
    let port = serve.addr("smtp submission").port();
    let r = run(port, erin, json!([]));
    assert_eq!(r[0].1, 525, "{r:?}\n{}", serve.log_text());
    let (ok, out, err) = run_authrelay(&config, &[], &["user", "show", "erin"], "");
    assert!(ok, "{err}");
    assert!(
        out.contains("recipients_per_day: 7 (this user's)") && out.contains("suspended: since"),
        "{out}"
    );

    let (ok, out, err) = run_authrelay(&config, &[], &["user", "unlock", "erin"], "");
    assert!(ok, "{err}");
    assert!(out.contains("unlocked erin@example.org"), "{out}");
    let r = run(port, erin, json!([["mail", erin]]));
    assert_eq!(codes(&r), [235, 250], "{r:?}");
    serve.signal("TERM");
    serve.wait_exit(Duration::from_secs(15));
}
