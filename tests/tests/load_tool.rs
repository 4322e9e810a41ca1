//! tools/smtp-load against the real stack (STARTTLS, AUTH, 1 KiB through to
//! the sink) and against a server we did not write (aiosmtpd): its report
//! counts what happened, and refusals are counted by reply code.

use std::process::Command;
use std::time::Duration;

use authrelay_e2e::*;

const PASSWORD: &str = "load-Tool-Secret-3";

/// Runs smtp-load with `args` for 2 s; returns its JSON report.
fn load(args: &[&str], password: &str) -> serde_json::Value {
    let out = Command::new(bin("smtp-load"))
        .args(["-d", "2s", "--json"])
        .args(args)
        .env("SMTP_LOAD_PASSWORD", password)
        .output()
        .expect("smtp-load (cargo build --workspace --bins)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("smtp-load output: {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn smtp_load_reports_sessions_latencies_cpu_and_errors_by_reply_code() {
    // One user sending as fast as it can is what the stolen-account limits
    // stop: they are off for this load.
    let (_dir, _redis, sink, stack) = standard_stack(
        "load-tool",
        "[limits.per_user]\nenabled = false\n",
        PASSWORD,
    );
    let server = stack.submission.to_string();
    let ok = load(
        &[
            "--server",
            &server,
            "-c",
            "4",
            "--starttls",
            "--mech",
            "CRAM-MD5",
            "--user",
            "test@mailserver.foo.com",
            "--size",
            "1024",
            "--to",
            "someone@outside.example",
        ],
        PASSWORD,
    );
    let sessions = ok["sessions"].as_u64().unwrap();
    assert!(sessions > 0, "{ok}");
    assert_eq!(
        ok["errors"],
        serde_json::json!({}),
        "{ok}\n{}",
        stack.logs()
    );
    assert_eq!(ok["mechanism"], "CRAM-MD5");
    let auth = &ok["auth"];
    for k in ["p50_ms", "p90_ms", "p99_ms", "max_ms"] {
        assert!(auth[k].as_f64().unwrap() > 0.0, "{k}: {ok}");
    }
    assert!(auth["p50_ms"].as_f64() <= auth["p99_ms"].as_f64(), "{ok}");
    assert!(ok["client_cpu_ms"].as_f64().is_some(), "{ok}");
    // Every acknowledged message reached the sink.
    let msgs = sink.wait_messages(sessions as usize, Duration::from_secs(30));
    assert_eq!(msgs.len() as u64, sessions, "{ok}");

    let refused = load(
        &[
            "--server",
            &server,
            "-c",
            "2",
            "--starttls",
            "--mech",
            "PLAIN",
            "--user",
            "test@mailserver.foo.com",
        ],
        "not-the-password",
    );
    assert_eq!(refused["sessions"], 0, "{refused}");
    assert!(
        refused["errors"]["535 at AUTH"].as_u64().unwrap_or(0) > 0,
        "{refused}"
    );
}

#[test]
fn smtp_load_drives_a_server_we_did_not_write() {
    let dir = scratch("load-tool-aiosmtpd");
    let sink = Sink::start(&dir);
    let r = load(
        &[
            "--server",
            &sink.addr.to_string(),
            "-c",
            "2",
            "--size",
            "512",
        ],
        "",
    );
    let sessions = r["sessions"].as_u64().unwrap();
    assert!(sessions > 0, "{r}");
    assert_eq!(r["errors"], serde_json::json!({}), "{r}");
    assert_eq!(
        sink.wait_messages(sessions as usize, Duration::from_secs(30))
            .len() as u64,
        sessions
    );
}

/// `--rate`: sessions start on a fixed schedule (open loop), not as fast as
/// the server answers: 25 a second over 2 s is about 50, however quick the
/// server, and every one of them arrives.
#[test]
fn smtp_load_rate_starts_sessions_on_schedule() {
    let dir = scratch("load-tool-rate");
    let sink = Sink::start(&dir);
    let r = load(
        &[
            "--server",
            &sink.addr.to_string(),
            "-c",
            "4",
            "--rate",
            "25",
            "--size",
            "64",
        ],
        "",
    );
    let sessions = r["sessions"].as_u64().unwrap();
    assert!((45..=50).contains(&sessions), "{r}");
    assert_eq!(r["offered_rate"], serde_json::json!(25.0), "{r}");
    assert_eq!(r["errors"], serde_json::json!({}), "{r}");
    assert_eq!(
        sink.wait_messages(sessions as usize, Duration::from_secs(30))
            .len() as u64,
        sessions
    );
}
