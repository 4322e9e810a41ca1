//! Interop on every CI run with SMTP/SASL implementations we did not write,
//! against the real binaries: GNU SASL's `gsasl`, `msmtp` (GnuTLS + GNU
//! SASL) and Cyrus' `smtptest` (OpenSSL + Cyrus libsasl2) with every
//! mechanism each offers, the right and a wrong password, STARTTLS on TLS
//! 1.3 and forced TLS 1.2, -PLUS where offered; and Postfix + Dovecot from
//! the distribution's packages, private instances on loopback ports
//! (tests/support/postfix-dovecot.sh, nothing under /etc touched), both as
//! a client relaying through authrelay and as the hub relay-queue
//! authenticates to with each AuthInfo mechanism.
//!
//! Each test runs all its cases, prints `interop CLIENT: PASSED/TOTAL` (to
//! the real stdout, past the test harness' capture, so CI logs show the
//! counts) and then fails listing every case that did not pass. A missing
//! client fails with how to get it: scripts/test.sh installs them all.
//!
//! Passwords reach the clients on stdin (a prompt read without a terminal)
//! or through 0600 files, never argv.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use authrelay_e2e::*;
use serde_json::json;

const PASSWORD: &str = "tanstaaf-Secret-42";
const WRONG: &str = "not-the-password";
const USER: &str = "test@mailserver.foo.com";
/// The Postfix + Dovecot hub's password for the relay.
const HUB_SECRET: &str = "hub-Pw-7fq2-zx";

/// Mechanisms every client here speaks, besides -PLUS.
const MECHS: [&str; 6] = [
    "PLAIN",
    "LOGIN",
    "CRAM-MD5",
    "DIGEST-MD5",
    "SCRAM-SHA-1",
    "SCRAM-SHA-256",
];

#[derive(Clone, Copy, PartialEq, Debug)]
enum Tls {
    V13,
    V12,
}

impl Tls {
    fn label(self) -> &'static str {
        match self {
            Tls::V13 => "TLSv1.3",
            Tls::V12 => "TLSv1.2",
        }
    }
    /// A GnuTLS priority string (gsasl, msmtp).
    fn gnutls(self) -> &'static str {
        match self {
            Tls::V13 => "NORMAL:-VERS-ALL:+VERS-TLS1.3",
            Tls::V12 => "NORMAL:-VERS-ALL:+VERS-TLS1.2",
        }
    }
}

/// The cases of one client: each is checked, none stops the others.
struct Tally {
    client: &'static str,
    cases: Vec<(String, Result<(), String>)>,
}

impl Tally {
    fn new(client: &'static str) -> Tally {
        Tally {
            client,
            cases: Vec::new(),
        }
    }

    fn check(&mut self, case: impl Into<String>, ok: bool, detail: impl FnOnce() -> String) {
        let case = case.into();
        let res = if ok { Ok(()) } else { Err(detail()) };
        self.cases.push((case, res));
    }

    /// Prints the count and fails with every failed case.
    fn finish(self) {
        let passed = self.cases.iter().filter(|(_, r)| r.is_ok()).count();
        let line = format!("interop {}: {passed}/{}", self.client, self.cases.len());
        // Past libtest's capture: the counts are in every run's output.
        let _ = writeln!(std::io::stdout(), "{line}");
        println!("{line}");
        let failed: Vec<String> = self
            .cases
            .iter()
            .filter_map(|(c, r)| r.as_ref().err().map(|e| format!("--- {c}:\n{e}")))
            .collect();
        assert!(
            failed.is_empty(),
            "{line}; failed cases:\n{}",
            failed.join("\n")
        );
    }
}

/// The README's set-up (`test@mailserver.foo.com`), the aiosmtpd sink as
/// the smarthost, and no brute-force limits: these tests fail on purpose.
fn stack(name: &str) -> (PathBuf, Redis, Sink, Stack) {
    standard_stack(
        name,
        "[sasl.limits]\nmax_failures_per_ip = 0\nmax_failures_per_user = 0\n",
        PASSWORD,
    )
}

fn write_0600(path: &Path, text: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// Run `cmd` with `stdin`, killed after 60 s. Returns (exit code, stdout + stderr).
fn run(mut cmd: Command, stdin: &str) -> (i32, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
    });
    let out = child.wait_with_output().unwrap();
    let _ = tx.send(());
    let _ = watchdog.join();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The sink's message for `rcpt`, waiting up to `within`.
fn message_for(sink: &Sink, rcpt: &str, within: Duration) -> Option<String> {
    let deadline = Instant::now() + within;
    loop {
        let found = sink.messages().into_iter().find(|m| {
            m["rcpt_tos"]
                .as_array()
                .is_some_and(|a| a.iter().any(|r| r == rcpt))
        });
        if let Some(m) = found {
            return m["data"].as_str().map(str::to_owned);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Our Received: header in `data` says the session used `tls` and logged
/// in as USER with `mech`.
fn received_ok(data: &str, tls: Tls, mech: &str) -> bool {
    data.contains(&format!("(using {} with cipher", tls.label()))
        && data.contains(&format!("(authenticated as {USER} with {mech} bits="))
}

fn assert_no_password_logged(stack: &Stack) {
    let logs = stack.logs();
    for pw in [PASSWORD, WRONG, HUB_SECRET] {
        assert!(!logs.contains(pw), "a password reached a log");
    }
}

// ------------------------------------------------------------------ msmtp

/// msmtp: STARTTLS at `tls`, AUTH `mech`, one message to `rcpt`. The
/// password comes from `passwordeval "cat FILE"` in a 0600 msmtprc, FILE
/// 0600 too. Returns (exit code, debug transcript).
fn msmtp(
    dir: &Path,
    server: SocketAddr,
    mech: &str,
    tls: Tls,
    password: &str,
    rcpt: &str,
) -> (i32, String) {
    let msmtp = require_tool("msmtp", "apt-get install msmtp");
    let pw = dir.join("msmtp-password");
    write_0600(&pw, &format!("{password}\n"));
    let rc = dir.join("msmtprc");
    write_0600(
        &rc,
        &format!(
            "account interop\nhost {}\nport {}\ndomain msmtp.client.example\n\
             tls on\ntls_starttls on\ntls_certcheck off\ntls_priorities {}\n\
             auth {}\nuser {USER}\npasswordeval \"cat {}\"\nfrom {USER}\n\
             account default : interop\n",
            server.ip(),
            server.port(),
            tls.gnutls(),
            mech.to_lowercase(),
            pw.display()
        ),
    );
    let mut cmd = Command::new(msmtp);
    cmd.arg("-C").arg(&rc).arg("-d").arg(rcpt);
    run(
        cmd,
        &format!("From: {USER}\nTo: {rcpt}\nSubject: msmtp {mech} {tls:?}\n\nhello\n"),
    )
}

#[test]
fn msmtp_every_mechanism_on_tls_1_3_and_1_2_right_and_wrong_password() {
    let (dir, _redis, sink, stack) = stack("interop-msmtp");
    let mut t = Tally::new("msmtp");
    // msmtp 1.8 has no -PLUS mechanism: channel binding is not offered by it.
    for tls in [Tls::V13, Tls::V12] {
        for mech in MECHS {
            let rcpt = format!("msmtp-{}-{:?}@outside.example", mech.to_lowercase(), tls);
            let (code, text) = msmtp(&dir, stack.submission, mech, tls, PASSWORD, &rcpt);
            let sent = code == 0 && text.contains("<-- 235 2.7.0");
            let data = if sent {
                message_for(&sink, &rcpt, Duration::from_secs(30))
            } else {
                None
            };
            t.check(
                format!(
                    "{mech} {} right password: 235, message relayed",
                    tls.label()
                ),
                sent && data.as_deref().is_some_and(|d| received_ok(d, tls, mech)),
                || format!("exit {code}; sink got: {data:?}\n{text}"),
            );
            let (code, text) = msmtp(&dir, stack.submission, mech, tls, WRONG, &rcpt);
            t.check(
                format!("{mech} {} wrong password: 535", tls.label()),
                // EX_NOPERM
                code == 77 && text.contains("<-- 535 5.7.8 Authentication credentials invalid"),
                || format!("exit {code}\n{text}"),
            );
        }
    }
    assert_no_password_logged(&stack);
    t.finish();
}

// ------------------------------------------------------------------ gsasl

/// gsasl --smtp with STARTTLS at `tls`; the password (and for DIGEST-MD5
/// first an empty realm: the server's) answered to its prompts on stdin
/// (setsid takes the controlling terminal away so the prompt reads stdin).
fn gsasl(
    server: SocketAddr,
    mech: &str,
    tls: Tls,
    password: &str,
    extra: &[&str],
) -> (i32, String) {
    let gsasl = require_tool("gsasl", "apt-get install gsasl");
    let setsid = require_tool("setsid", "apt-get install util-linux");
    let mut cmd = Command::new(setsid);
    cmd.arg(gsasl)
        .args(["--smtp", "--starttls", "--x509-ca-file=", "--verbose"])
        .arg(format!("--priority={}", tls.gnutls()))
        .args([
            "--service=smtp",
            "--hostname=localhost",
            "--quality-of-protection=qop-auth",
        ])
        .args(extra)
        .args(["-m", mech, "-a", USER])
        .arg(server.ip().to_string())
        .arg(server.port().to_string());
    let stdin = if mech == "DIGEST-MD5" {
        format!("\n{password}\n")
    } else {
        format!("{password}\n")
    };
    run(cmd, &stdin)
}

#[test]
fn gsasl_every_mechanism_on_tls_1_3_and_1_2_with_plus_only_on_1_3() {
    let (_dir, _redis, _sink, stack) = stack("interop-gsasl");
    let mut t = Tally::new("gsasl");
    for tls in [Tls::V13, Tls::V12] {
        let mut mechs: Vec<&str> = MECHS.to_vec();
        if tls == Tls::V13 {
            mechs.extend(["SCRAM-SHA-1-PLUS", "SCRAM-SHA-256-PLUS"]);
        }
        for mech in mechs {
            // gsasl 2.2's SCRAM client fails by itself (before sending a
            // byte) for a non-PLUS SCRAM when it holds channel-binding data
            // from the TLS session: --no-cb makes it send `n,,`.
            let extra: &[&str] = if mech.starts_with("SCRAM") && !mech.ends_with("-PLUS") {
                &["--no-cb"]
            } else {
                &[]
            };
            let (code, text) = gsasl(stack.submission, mech, tls, PASSWORD, extra);
            let mut ok = code == 0
                && text.contains(&format!("AUTH {mech}"))
                && text.contains("235 2.7.0 Authentication successful");
            if mech.starts_with("SCRAM") {
                // gsasl verified our ServerSignature.
                ok &= text.contains("server trusted");
            }
            t.check(
                format!("{mech} {} right password: 235", tls.label()),
                ok,
                || format!("exit {code}\n{text}"),
            );
            let (code, text) = gsasl(stack.submission, mech, tls, WRONG, extra);
            t.check(
                format!("{mech} {} wrong password: 535", tls.label()),
                code != 0 && text.contains("535 5.7.8 Authentication credentials invalid"),
                || format!("exit {code}\n{text}"),
            );
        }
    }
    // On TLS 1.2 there is no tls-exporter: -PLUS is neither offered nor
    // accepted when a client asks for it anyway.
    for mech in ["SCRAM-SHA-1-PLUS", "SCRAM-SHA-256-PLUS"] {
        let (code, text) = gsasl(stack.submission, mech, Tls::V12, PASSWORD, &[]);
        let ehlo_auth = text
            .lines()
            .rfind(|l| l.starts_with("250-AUTH") || l.starts_with("250 AUTH"))
            .unwrap_or("")
            .to_owned();
        t.check(
            format!("{mech} TLSv1.2: not offered, 504 when asked"),
            code != 0 && !ehlo_auth.contains("-PLUS") && text.contains("504 5.5.4"),
            || format!("exit {code}\n{text}"),
        );
    }
    // The TLS versions were the ones asked for.
    let log = stack.frontend.log_text();
    let v12 = log.matches("STARTTLS=server version=TLSv1.2").count();
    let v13 = log.matches("STARTTLS=server version=TLSv1.3").count();
    t.check(
        "sessions on TLS 1.2 and on TLS 1.3 as forced",
        v12 == 2 * MECHS.len() + 2 && v13 == 2 * (MECHS.len() + 2),
        || format!("TLSv1.2 sessions {v12}, TLSv1.3 sessions {v13}"),
    );
    assert_no_password_logged(&stack);
    t.finish();
}

// --------------------------------------------------------------- smtptest

/// Cyrus' smtptest (cyrus-clients; not on PATH on Debian).
fn smtptest_bin() -> PathBuf {
    which("smtptest")
        .or_else(|| {
            let p = PathBuf::from("/usr/lib/cyrus/bin/smtptest");
            p.exists().then_some(p)
        })
        .unwrap_or_else(|| {
            panic!(
                "smtptest is not installed: apt-get install --no-install-recommends cyrus-clients \
                 (it lands in /usr/lib/cyrus/bin), or run scripts/test.sh, which does"
            )
        })
}

/// smtptest with STARTTLS (`-t ""`), TLS 1.2 forced through an OpenSSL
/// configuration file (MaxProtocol) in OPENSSL_CONF. It would take the
/// password in argv (`-w`); without it, it prompts with getpass(), which,
/// with no controlling terminal (setsid), reads stdin: the password, then
/// QUIT for the interactive part that follows AUTH.
fn smtptest(dir: &Path, server: SocketAddr, mech: &str, tls: Tls, password: &str) -> String {
    let setsid = require_tool("setsid", "apt-get install util-linux");
    let mut cmd = Command::new(setsid);
    cmd.arg(smtptest_bin())
        .args(["-t", "", "-p", &server.port().to_string()])
        .args(["-m", mech, "-a", USER])
        .arg(server.ip().to_string());
    if tls == Tls::V12 {
        let conf = dir.join("openssl-tls12.cnf");
        std::fs::write(
            &conf,
            "openssl_conf = openssl_init\n[openssl_init]\nssl_conf = ssl_sect\n\
             [ssl_sect]\nsystem_default = tls_sect\n[tls_sect]\nMaxProtocol = TLSv1.2\n",
        )
        .unwrap();
        cmd.env("OPENSSL_CONF", conf);
    }
    // smtptest exits 0 whatever happened: the transcript tells.
    run(cmd, &format!("{password}\nQUIT\n")).1
}

#[test]
fn smtptest_every_mechanism_on_tls_1_3_and_1_2_right_and_wrong_password() {
    let (dir, _redis, _sink, stack) = stack("interop-smtptest");
    let mut t = Tally::new("smtptest");
    for tls in [Tls::V13, Tls::V12] {
        let on = format!("TLS connection established: {}", tls.label());
        for mech in MECHS {
            let text = smtptest(&dir, stack.submission, mech, tls, PASSWORD);
            t.check(
                format!("{mech} {} right password: 235", tls.label()),
                text.contains(&on)
                    && text.contains(&format!("C: AUTH {mech}"))
                    && text.contains("S: 235 2.7.0 Authentication successful")
                    && text.contains("Authenticated."),
                || text.clone(),
            );
            let text = smtptest(&dir, stack.submission, mech, tls, WRONG);
            t.check(
                format!("{mech} {} wrong password: 535", tls.label()),
                text.contains(&on)
                    && text.contains("S: 535 5.7.8 Authentication credentials invalid")
                    && !text.contains("Authenticated."),
                || text.clone(),
            );
        }
    }
    // Cyrus libsasl2 2.1.28 (Debian 12) offers SCRAM-*-PLUS to smtptest but
    // cannot do it with us: it announces the mechanism without -PLUS
    // (`AUTH SCRAM-SHA-256` with a `p=tls-unique` GS2 header), and
    // tls-unique does not exist on TLS 1.3 (RFC 9266). The server must
    // refuse that — a binding on a non-PLUS mechanism — not log it in.
    for mech in ["SCRAM-SHA-1-PLUS", "SCRAM-SHA-256-PLUS"] {
        let text = smtptest(&dir, stack.submission, mech, Tls::V13, PASSWORD);
        t.check(
            format!("{mech} TLSv1.3: libsasl2's tls-unique binding refused"),
            text.contains("p=tls-unique") || text.contains("cD10bHMtdW5pcXVl"),
            || text.clone(),
        );
        // SCRAM's e= (as a 334), which smtptest answers with `*`: the
        // cancelled exchange is 501 (RFC 4954 §4), never a login.
        let refused = text.contains("ZT1jaGFubmVsLWJpbmRpbmctbm90LXN1cHBvcnRlZA==")
            && !text.contains("Authenticated.");
        t.check(
            format!("{mech} TLSv1.3: e=channel-binding-not-supported, then 501, not logged in"),
            refused && text.contains("501 5.0.0"),
            || text.clone(),
        );
    }
    assert!(
        stack
            .frontend
            .log_text()
            .contains("channel binding requested on a non-PLUS mechanism"),
        "{}",
        stack.frontend.log_text()
    );
    assert_no_password_logged(&stack);
    t.finish();
}

// -------------------------------------------------------- Postfix + Dovecot

/// Private Postfix (+ Dovecot) instances made by
/// tests/support/postfix-dovecot.sh under `dir`; stopped on drop.
struct PostfixDovecot {
    dir: PathBuf,
    pids: Vec<u32>,
}

impl PostfixDovecot {
    fn require() {
        for (tool, how) in [
            (
                "postfix",
                "apt-get install postfix (scripts/test.sh preseeds \"No configuration\" and starts nothing)",
            ),
            ("dovecot", "apt-get install dovecot-core"),
        ] {
            if which(tool).is_none() && !Path::new("/usr/sbin").join(tool).exists() {
                panic!("{tool} is not installed: {how}, or run scripts/test.sh, which does");
            }
        }
        assert!(
            Path::new("/usr/lib/x86_64-linux-gnu/sasl2/libplain.so").exists()
                || Path::new("/usr/lib/aarch64-linux-gnu/sasl2/libplain.so").exists()
                || Path::new("/usr/lib/sasl2/libplain.so").exists(),
            "Cyrus SASL's client plugins (Postfix's SMTP client SASL) are missing: \
             apt-get install libsasl2-modules, or run scripts/test.sh, which does"
        );
    }

    fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> PostfixDovecot {
        Self::require();
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("bash")
            .arg(support("postfix-dovecot.sh"))
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .output()
            .expect("bash");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut pf = PostfixDovecot {
            dir: dir.to_owned(),
            pids: stdout
                .lines()
                .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
                .collect(),
        };
        assert!(
            out.status.success(),
            "postfix-dovecot.sh {args:?} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        pf.pids.retain(|p| *p > 1);
        pf
    }

    fn maillog(&self) -> String {
        std::fs::read_to_string(self.dir.join("postfix/maillog")).unwrap_or_default()
    }

    fn dovecot_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dovecot/dovecot.log")).unwrap_or_default()
    }

    /// Postfix's sendmail with this instance's configuration directory.
    fn sendmail(&self, from: &str, rcpt: &str, message: &str) {
        let sendmail = which("sendmail")
            .or_else(|| Some(PathBuf::from("/usr/sbin/sendmail")))
            .unwrap();
        let (code, text) = run(
            {
                let mut c = Command::new(sendmail);
                c.arg("-C")
                    .arg(self.dir.join("postfix/etc"))
                    .args(["-f", from, rcpt]);
                c
            },
            message,
        );
        assert_eq!(code, 0, "sendmail -C: {text}");
    }

    fn wait_log(&self, what: &str, within: Duration, needle: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if needle(&self.maillog()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = what;
        false
    }
}

impl Drop for PostfixDovecot {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(support("postfix-dovecot.sh"))
            .arg("stop")
            .arg(&self.dir)
            .output();
        // The masters announced at start, should a stop not have taken.
        std::thread::sleep(Duration::from_millis(300));
        for pid in &self.pids {
            let _ = Command::new("kill")
                .arg("-9")
                .arg(pid.to_string())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Postfix's SMTP client (Cyrus libsasl2) relaying through authrelay's
/// submission port: `relayhost`, mandatory STARTTLS, SASL with one
/// mechanism per transport (smtp_sasl_mechanism_filter), TLS 1.3 or at most
/// TLS 1.2 per transport, and one transport per mechanism with a wrong
/// password. Mail enters with Postfix's own `sendmail -C`.
#[test]
fn postfix_relays_through_authrelay_with_every_mechanism_on_tls_1_3_and_1_2() {
    PostfixDovecot::require();
    let (dir, _redis, sink, stack) = stack("interop-postfix-client");
    let mechs = MECHS.join(" ");
    let pf = PostfixDovecot::run(
        &dir.join("pf"),
        &[
            "client",
            &dir.join("pf").display().to_string(),
            &stack.submission.to_string(),
        ],
        &[
            ("PD_USER", USER),
            ("PD_PASSWORD", PASSWORD),
            ("PD_WRONG_PASSWORD", WRONG),
            ("PD_MECHS", &mechs),
        ],
    );
    let mut t = Tally::new("postfix-client");
    let mut right = Vec::new();
    for mech in MECHS {
        let lower = mech.to_lowercase();
        for (tls, v) in [(Tls::V13, "13"), (Tls::V12, "12")] {
            let rcpt = format!("{lower}-{v}@interop.example");
            pf.sendmail(
                USER,
                &rcpt,
                &format!("From: {USER}\nTo: {rcpt}\nSubject: Postfix {mech} {tls:?}\n\nhello\n"),
            );
            right.push((mech, tls, rcpt));
        }
        let rcpt = format!("wrong-{lower}@interop.example");
        pf.sendmail(
            USER,
            &rcpt,
            &format!("From: {USER}\nTo: {rcpt}\nSubject: wrong\n\nhello\n"),
        );
    }
    for (mech, tls, rcpt) in &right {
        let data = message_for(&sink, rcpt, Duration::from_secs(60));
        t.check(
            format!(
                "{mech} {}: relayed, our Received: header names both",
                tls.label()
            ),
            data.as_deref().is_some_and(|d| received_ok(d, *tls, mech)),
            || format!("sink: {data:?}\nPostfix maillog:\n{}", pf.maillog()),
        );
    }
    for mech in MECHS {
        let rcpt = format!("to=<wrong-{}@interop.example>", mech.to_lowercase());
        let seen = pf.wait_log(&rcpt, Duration::from_secs(30), |log| {
            log.lines().any(|l| {
                l.contains(&rcpt)
                    && l.contains("status=deferred (SASL authentication failed")
                    && l.contains("said: 535 5.7.8 Authentication credentials invalid")
            })
        });
        t.check(
            format!("{mech} wrong password: 535, deferred"),
            seen,
            || pf.maillog(),
        );
    }
    let frontend = stack.frontend.log_text();
    for mech in MECHS {
        t.check(
            format!("{mech}: logged in as {USER}"),
            frontend.contains(&format!("authid={USER}, mech={mech}")),
            || frontend.clone(),
        );
    }
    assert!(!pf.maillog().contains(PASSWORD));
    assert_no_password_logged(&stack);
    t.finish();
}

/// Point relay-queue at `vars` (AUTHRELAY__… overrides) and restart it.
fn set_queue_env(stack: &mut Stack, vars: &[(&str, String)]) {
    for (k, v) in vars {
        stack.endpoints.retain(|(key, _)| key != k);
        stack.endpoints.push(((*k).to_owned(), v.clone()));
    }
    stack.restart_queue();
}

fn wait_for(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Postfix + Dovecot as the hub: a Postfix smtpd with STARTTLS and Dovecot
/// SASL (passwd-file, `mailrelay@foo`) that relays only for authenticated
/// clients, onward to the aiosmtpd sink. relay-queue authenticates to it
/// with each mechanism an AuthInfo line names and Dovecot offers (Dovecot
/// 2.3 has no -PLUS); with a wrong password the message stays queued.
#[test]
fn relay_queue_authenticates_to_postfix_dovecot_with_every_authinfo_mechanism() {
    PostfixDovecot::require();
    let dir = scratch("interop-postfix-hub");
    let hub_dir = dir.join("hub");
    std::fs::create_dir_all(hub_dir.join("tls")).unwrap();
    let redis = Redis::start(&dir);
    let sink = Sink::start(&dir);
    let (cert, key) = test_certificate(&hub_dir.join("tls"), "mailhub.interop.example");
    let hub_port = free_port();
    let hub = PostfixDovecot::run(
        &hub_dir,
        &[
            "hub",
            &hub_dir.display().to_string(),
            &hub_port.to_string(),
            &sink.addr.to_string(),
            &cert.display().to_string(),
            &key.display().to_string(),
            "foo",
            "mailrelay",
        ],
        &[("PD_PASSWORD", HUB_SECRET)],
    );
    let mut stack = Stack::start(
        &dir,
        &redis,
        StackOptions {
            hostname: "mailrelay.foo.com".into(),
            smarthost: Some(format!("127.0.0.1:{hub_port}").parse().unwrap()),
            ..Default::default()
        },
    );
    stack.add_user("test", "mailserver.foo.com", PASSWORD);
    let authinfo = dir.join("authinfo");
    let mut t = Tally::new("postfix+dovecot-hub");
    // What relay-queue's SASL client speaks (crates/sasl/src/client.rs) and
    // Dovecot offers.
    for (i, mech) in MECHS.into_iter().enumerate() {
        write_0600(
            &authinfo,
            &format!(
                "AuthInfo:127.0.0.1 \"U:mailrelay\" \"I:mailrelay\" \"P:{HUB_SECRET}\" \"R:foo\" \"M:{mech}\"\n"
            ),
        );
        set_queue_env(
            &mut stack,
            &[(
                "AUTHRELAY__RELAY_QUEUE__AUTHINFO_FILE",
                authinfo.display().to_string(),
            )],
        );
        let rcpt = format!("friend{i}@outside.example");
        let res = smtplib(
            json!({"port": stack.submission.port(), "starttls": true, "mech": "PLAIN",
                   "user": USER, "from": USER, "to": [rcpt],
                   "body": format!("Subject: via Postfix+Dovecot with {mech}\r\n\r\nhello {i}\r\n")}),
            PASSWORD,
        );
        let submitted = res["auth"][0] == 235 && res["send"]["ok"] == true;
        let data = if submitted {
            message_for(&sink, &rcpt, Duration::from_secs(60))
        } else {
            None
        };
        let relay_line = format!("AUTH=client, relay=127.0.0.1, mech={mech}, bits=");
        t.check(
            format!("{mech}: relay-queue logged in to Postfix+Dovecot, message delivered"),
            data.as_deref().is_some_and(|d| {
                // Postfix's Received: header: over TLS, authenticated as
                // Dovecot's user (smtpd_sasl_authenticated_header).
                d.contains("(Authenticated sender: mailrelay@foo)")
                    && d.contains("by mailhub.interop.example (Postfix)")
                    && d.contains("(using TLSv1.3")
            }) && stack.queue.log_text().contains(&relay_line)
                && hub.maillog().contains(&format!("sasl_method={mech}, sasl_username=mailrelay@foo")),
            || {
                format!(
                    "submit: {res}\nsink: {data:?}\nrelay-queue log:\n{}\nPostfix maillog:\n{}\nDovecot log:\n{}",
                    stack.queue.log_text(),
                    hub.maillog(),
                    hub.dovecot_log()
                )
            },
        );
        // Recorded as delivered before the next restart (no resend).
        wait_for(Duration::from_secs(30), || {
            let (ok, out, _) = stack.authrelay(&["queue", "list", "--json"], "");
            ok && out.trim().is_empty()
        });
    }
    // A wrong password: Dovecot refuses, the message stays queued, the
    // password is in no log.
    write_0600(
        &authinfo,
        "AuthInfo:127.0.0.1 \"U:mailrelay\" \"P:not-the-Password-9\" \"R:foo\" \"M:CRAM-MD5\"\n",
    );
    set_queue_env(
        &mut stack,
        &[(
            "AUTHRELAY__RELAY_QUEUE__AUTHINFO_FILE",
            authinfo.display().to_string(),
        )],
    );
    let rcpt = "friend-wrong@outside.example";
    let res = smtplib(
        json!({"port": stack.submission.port(), "starttls": true, "mech": "PLAIN",
               "user": USER, "from": USER, "to": [rcpt], "body": "Subject: wrong\r\n\r\nx\r\n"}),
        PASSWORD,
    );
    let mut last_error = String::new();
    let deferred = res["send"]["ok"] == true
        && wait_for(Duration::from_secs(30), || {
            let (_, out, _) = stack.authrelay(&["queue", "list", "--json"], "");
            last_error = out;
            last_error.contains("535")
        });
    t.check(
        "CRAM-MD5 wrong password: Dovecot refuses (535), the message stays queued",
        deferred
            && message_for(&sink, rcpt, Duration::from_millis(1)).is_none()
            && hub
                .maillog()
                .contains("SASL CRAM-MD5 authentication failed"),
        || {
            format!(
                "submit: {res}\nqueue: {last_error}\nPostfix maillog:\n{}",
                hub.maillog()
            )
        },
    );
    for logs in [stack.logs(), hub.maillog(), hub.dovecot_log()] {
        assert!(!logs.contains(HUB_SECRET), "the hub password was logged");
        assert!(!logs.contains("not-the-Password-9"));
    }
    t.finish();
}
