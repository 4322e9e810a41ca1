//! smtp-frontend as a complete ESMTP server: TLS on both submission ports,
//! a closed relay, pipelining, limits, BDAT, sessions visible across
//! frontends, and a drain that loses nothing.

use std::io::Write;
use std::time::{Duration, Instant};

use authrelay_e2e::*;
use authrelay_sasl::Mechanism;
use serde_json::json;

const PASSWORD: &str = "frontend-Secret-7";
const USER: &str = "test@mailserver.foo.com";

fn stack(name: &str, extra: &str) -> (std::path::PathBuf, Redis, Sink, Stack) {
    standard_stack(name, extra, PASSWORD)
}

#[test]
fn plain_and_login_are_offered_only_after_starttls_and_work_there() {
    let (_d, _r, sink, stack) = stack("offer", "");
    let before = smtplib(json!({"port": stack.submission.port()}), "");
    let offered: Vec<String> = serde_json::from_value(before["auth_offered"].clone()).unwrap();
    assert!(
        !offered.contains(&"PLAIN".to_owned()) && !offered.contains(&"LOGIN".to_owned()),
        "{offered:?}"
    );
    assert!(offered.contains(&"CRAM-MD5".to_owned()), "{offered:?}");
    let after = smtplib(
        json!({"port": stack.submission.port(), "starttls": true, "mech": "LOGIN", "user": USER,
               "from": USER, "to": ["a@outside.example"]}),
        PASSWORD,
    );
    let offered: Vec<String> = serde_json::from_value(after["auth_offered"].clone()).unwrap();
    assert!(
        offered.contains(&"PLAIN".to_owned()) && offered.contains(&"LOGIN".to_owned()),
        "{offered:?}"
    );
    assert!(
        offered.contains(&"SCRAM-SHA-256-PLUS".to_owned()),
        "TLS 1.3 gives tls-exporter: {offered:?}"
    );
    assert_eq!(after["send"]["ok"], true, "{after}");
    // PLAIN before TLS is refused with 538 (RFC 4954 §6).
    let mut c = Raw::connect(stack.submission);
    c.cmd("EHLO x");
    let (code, text) = c.cmd(&format!(
        "AUTH PLAIN {}",
        b64(format!("\0{USER}\0{PASSWORD}").as_bytes())
    ));
    assert_eq!(code, 538, "{text}");
    assert!(text.contains("5.7.11"));
    assert_eq!(sink.wait_messages(1, Duration::from_secs(20)).len(), 1);
}

/// TLS 1.2 has no tls-exporter, and the binding TLS 1.2 clients use
/// (tls-unique) is not one we can offer: SCRAM-*-PLUS is not offered there,
/// so no client follows an offer into a certain failure. The plain SCRAM
/// variants still are, and still work.
#[test]
fn scram_plus_is_offered_on_tls_1_3_only() {
    let (_d, _r, _sink, stack) = stack("plus-tls12", "");
    for (tls_max, plus) in [("1.2", false), ("1.3", true)] {
        let res = smtplib(
            json!({"port": stack.submission.port(), "starttls": true, "tls_max": tls_max}),
            "",
        );
        let offered: Vec<String> = serde_json::from_value(res["auth_offered"].clone()).unwrap();
        let version = res["tls_version"].as_str().unwrap_or_default().to_owned();
        assert_eq!(version, if plus { "TLSv1.3" } else { "TLSv1.2" }, "{res}");
        for m in ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS"] {
            assert_eq!(
                offered.contains(&m.to_owned()),
                plus,
                "{version}: {offered:?}"
            );
        }
        assert!(offered.contains(&"SCRAM-SHA-256".to_owned()), "{offered:?}");
    }
}

/// A client that sends an IP address as SNI (RFC 6066 forbids it; some do)
/// is served, and costs no WARN line per session.
#[test]
fn an_ip_address_as_sni_is_ignored_quietly() {
    let (_d, _r, _sink, stack) = stack("sni-ip", "");
    let openssl = require_tool("openssl", "apt-get install openssl");
    let out = std::process::Command::new(openssl)
        .args(["s_client", "-starttls", "smtp", "-connect"])
        .arg(stack.submission.to_string())
        .args(["-servername", "127.0.0.1"])
        .stdin(std::process::Stdio::piped())
        .output()
        .expect("run openssl s_client");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("TLSv1.3"), "the handshake completed: {text}");
    std::thread::sleep(Duration::from_millis(300));
    let log = stack.frontend.log_text();
    assert!(!log.contains("SNI"), "{log}");
}

#[test]
fn implicit_tls_submissions_with_smtplib_and_swaks() {
    let (_d, _r, sink, mut stack) = stack(
        "implicit",
        "[[frontend.listeners]]\naddress = \"127.0.0.1:0\"\nrole = \"submissions\"\n",
    );
    let port = stack.frontend.addr("smtp submissions").port();
    let res = smtplib(
        json!({"port": port, "ssl": true, "mech": "PLAIN", "user": USER, "from": USER, "to": ["b@outside.example"]}),
        PASSWORD,
    );
    assert_eq!(res["auth"][0], 235, "{res}");
    assert_eq!(res["send"]["ok"], true, "{res}");
    let swaks = which("swaks")
        .expect("swaks is needed: apt-get install swaks (scripts/test.sh installs it)");
    // swaks takes the password on its command line; this is a throwaway test password.
    for (flags, p) in [
        (vec!["--tlsc"], port),
        (vec!["--tls"], stack.submission.port()),
    ] {
        let out = std::process::Command::new(&swaks)
            .args(["--server", &format!("127.0.0.1:{p}")])
            .args(&flags)
            .args([
                "--auth",
                "LOGIN",
                "--auth-user",
                USER,
                "--auth-password",
                PASSWORD,
            ])
            .args([
                "--from",
                USER,
                "--to",
                "c@outside.example",
                "--body",
                "via swaks",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "swaks {flags:?}: {text}");
        assert!(text.contains("235 2.7.0"), "{text}");
        assert!(text.contains("Message accepted for delivery"), "{text}");
    }
    let msgs = sink.wait_messages(3, Duration::from_secs(20));
    assert_eq!(msgs.len(), 3);
    assert!(
        msgs.iter()
            .all(|m| m["data"].as_str().unwrap().contains("with ESMTPSA")),
        "{msgs:?}"
    );
}

#[test]
fn open_relay_battery_is_refused_without_auth_and_with_untrusted_auth() {
    // CRAM-MD5 is offered but not trusted for relaying.
    let extra = "[sasl]\nmechanisms = \"SCRAM-SHA-256 DIGEST-MD5 CRAM-MD5 PLAIN LOGIN\"\ntrusted = \"SCRAM-SHA-256 DIGEST-MD5 PLAIN LOGIN\"\n";
    let (_d, _r, _s, stack) = stack("relay-battery", extra);
    let battery = [
        "victim@outside.example",
        "user%outside.example@mailserver.foo.com",
        "outside.example!user@mailserver.foo.com",
        "@mailserver.foo.com:user@outside.example",
        "\"user@outside.example\"@mailserver.foo.com",
        "user@[192.0.2.1]",
        "user@outside.example.",
        "user@OUTSIDE.Example",
        "user@mailserver.foo.com.outside.example",
    ];
    let try_all = |c: &mut Raw, from: &str| -> Vec<(String, u16)> {
        battery
            .iter()
            .map(|rcpt| {
                c.cmd("RSET");
                let (m, t) = c.cmd(&format!("MAIL FROM:<{from}>"));
                assert_eq!(m, 250, "{t}");
                (rcpt.to_string(), c.cmd(&format!("RCPT TO:<{rcpt}>")).0)
            })
            .collect()
    };
    // No AUTH, including a sender forged as a local user.
    let mut c = Raw::connect(stack.relay);
    c.cmd("EHLO attacker.example");
    for from in ["someone@outside.example", "test@mailserver.foo.com"] {
        for (rcpt, code) in try_all(&mut c, from) {
            assert!(
                code >= 500,
                "relay to {rcpt} from <{from}> without AUTH answered {code}"
            );
        }
    }
    // AUTH with an untrusted mechanism: still no relaying.
    let mut c = Raw::connect(stack.relay);
    c.cmd("EHLO client.example");
    assert_eq!(auth_raw(&mut c, Mechanism::CramMd5, USER, PASSWORD), 235);
    for (rcpt, code) in try_all(&mut c, USER) {
        assert!(
            code >= 500,
            "relay to {rcpt} after untrusted CRAM-MD5 answered {code}"
        );
    }
    // AUTH with a trusted mechanism: the outside recipients relay.
    let mut c = Raw::connect(stack.relay);
    c.cmd("EHLO client.example");
    assert_eq!(
        auth_raw(&mut c, Mechanism::DigestMd5, "test", PASSWORD),
        235
    );
    c.cmd("MAIL FROM:<test@mailserver.foo.com>");
    for rcpt in ["victim@outside.example", "user@OUTSIDE.Example"] {
        assert_eq!(
            c.cmd(&format!("RCPT TO:<{rcpt}>")).0,
            250,
            "{rcpt} after trusted AUTH"
        );
    }
}

#[test]
fn pipelined_transaction_gets_replies_in_order() {
    let (_d, _r, sink, stack) = stack("pipelining", "");
    let mut c = Raw::connect(stack.relay);
    // Local recipient: no AUTH needed on the relay listener.
    c.write(
        b"EHLO client.example\r\nMAIL FROM:<a@outside.example>\r\nRCPT TO:<test@mailserver.foo.com>\r\n\
          RCPT TO:<nobody@elsewhere.example>\r\nDATA\r\n",
    );
    let codes: Vec<u16> = (0..5).map(|_| c.read().0).collect();
    assert_eq!(codes, [250, 250, 250, 550, 354]);
    c.write(b"Subject: pipelined\r\n\r\nbody\r\n.\r\nNOOP\r\nQUIT\r\n");
    let (code, text) = c.read();
    assert_eq!(code, 250, "{text}");
    assert_eq!(c.read().0, 250, "NOOP after the data");
    assert_eq!(c.read().0, 221);
    assert_eq!(sink.wait_messages(1, Duration::from_secs(20)).len(), 1);
}

#[test]
fn command_pipelined_after_starttls_is_discarded_not_run_inside_tls() {
    let (_d, _r, _s, stack) = stack("starttls-injection", "");
    let mut c = Raw::connect(stack.submission);
    c.cmd("EHLO client.example");
    // RFC 3207 §4.2 / CVE-2011-0411: the injected command arrives in the
    // same packet as STARTTLS.
    c.write(b"STARTTLS\r\nMAIL FROM:<injected@outside.example>\r\n");
    let (code, _) = c.read();
    assert_eq!(code, 220);
    let mut t = c.into_tls();
    // Had the injected MAIL run, this EHLO would see its reply first; and
    // MAIL after TLS would be "sender already specified".
    let (code, text) = t.cmd("EHLO client.example");
    assert_eq!(code, 250, "{text}");
    assert!(
        text.contains("Hello client.example"),
        "first reply inside TLS must be EHLO's: {text}"
    );
    let (code, text) = t.cmd("MAIL FROM:<x@outside.example>");
    assert_eq!(
        code, 530,
        "state reset after STARTTLS, AUTH needed again: {text}"
    );
}

#[test]
fn message_over_size_is_refused_with_552_and_connection_stays_usable() {
    let (_d, _r, sink, stack) = stack("size", "[frontend]\nmax_message_size = 100000\n");
    let mut c = Raw::connect(stack.relay);
    let (_, ehlo) = c.cmd("EHLO client.example");
    assert!(ehlo.contains("SIZE 100000"), "{ehlo}");
    // Declared too big: refused at MAIL (RFC 1870).
    assert_eq!(c.cmd("MAIL FROM:<a@outside.example> SIZE=200000").0, 552);
    // Undeclared: refused at the end of DATA, the body not kept.
    assert_eq!(c.cmd("MAIL FROM:<a@outside.example>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<test@mailserver.foo.com>").0, 250);
    assert_eq!(c.cmd("DATA").0, 354);
    let line = format!("{}\r\n", "x".repeat(998));
    let mut body = String::from("Subject: big\r\n\r\n");
    while body.len() < 300_000 {
        body.push_str(&line);
    }
    c.write(body.as_bytes());
    let (code, text) = c.cmd(".");
    assert_eq!(code, 552, "{text}");
    assert!(text.contains("5.3.4"), "{text}");
    assert_eq!(c.cmd("NOOP").0, 250, "connection stays usable");
    assert_eq!(c.cmd("MAIL FROM:<a@outside.example>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<test@mailserver.foo.com>").0, 250);
    assert_eq!(c.cmd("DATA").0, 354);
    assert_eq!(c.cmd("Subject: small\r\n\r\nok\r\n.").0, 250);
    let msgs = sink.wait_messages(1, Duration::from_secs(20));
    assert_eq!(msgs.len(), 1, "only the small message is queued");
}

#[test]
fn bdat_chunks_are_queued_and_delivered() {
    let (_d, _r, sink, stack) = stack("bdat", "");
    let mut c = Raw::connect(stack.relay);
    let (_, ehlo) = c.cmd("EHLO client.example");
    assert!(ehlo.contains("CHUNKING"), "{ehlo}");
    // BDAT before MAIL: its octets are still read, then 503.
    c.write(b"BDAT 5\r\nhello");
    assert_eq!(c.read().0, 503);
    assert_eq!(c.cmd("MAIL FROM:<a@outside.example>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<test@mailserver.foo.com>").0, 250);
    let part1 = b"Subject: chunked\r\n\r\nfirst part, ";
    let part2 = b"second part\r\n.not a terminator\r\n";
    c.write(format!("BDAT {}\r\n", part1.len()).as_bytes());
    c.write(part1);
    assert_eq!(c.read().0, 250);
    c.write(format!("BDAT {} LAST\r\n", part2.len()).as_bytes());
    c.write(part2);
    let (code, text) = c.read();
    assert_eq!(code, 250, "{text}");
    let msgs = sink.wait_messages(1, Duration::from_secs(20));
    assert_eq!(msgs.len(), 1);
    assert!(
        msgs[0]["data"]
            .as_str()
            .unwrap()
            .contains("first part, second part\r\n.not a terminator\r\n")
    );
}

#[test]
fn two_frontends_share_sessions_and_the_connection_rate_limit() {
    let extra = "[frontend]\nconnection_rate = 6\nconnection_rate_window = \"30s\"\n";
    let (_d, _r, _s, mut stack) = stack("two-frontends", extra);
    let (_fe2, sub2, _relay2) = stack.spawn_frontend("smtp-frontend-2");
    // Hold an authenticated session on each frontend.
    let mut a = Raw::connect(stack.relay);
    a.cmd("EHLO a.example");
    assert_eq!(auth_raw(&mut a, Mechanism::CramMd5, USER, PASSWORD), 235);
    let mut b = Raw::connect(sub2);
    b.cmd("EHLO b.example");
    let admin = stack.frontend_admin();
    let env = [(
        "AUTHRELAY__ENDPOINTS__FRONTEND".to_owned(),
        format!("http://{admin}"),
    )];
    let deadline = Instant::now() + Duration::from_secs(15);
    let listing = loop {
        let (ok, out, err) = run_authrelay(&stack.config, &env, &["sessions", "--json"], "");
        assert!(ok, "{err}");
        let rows: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let instances: std::collections::HashSet<String> = rows
            .iter()
            .map(|r| r["instance"].as_str().unwrap().to_owned())
            .collect();
        if instances.len() >= 2 || Instant::now() > deadline {
            break rows;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let authed: Vec<&serde_json::Value> = listing.iter().filter(|r| r["auth_id"] == USER).collect();
    assert_eq!(authed.len(), 1, "{listing:?}");
    assert_eq!(authed[0]["mechanism"], "CRAM-MD5");
    let instances: std::collections::HashSet<&str> = listing
        .iter()
        .map(|r| r["instance"].as_str().unwrap())
        .collect();
    assert_eq!(
        instances.len(),
        2,
        "sessions of both frontends: {listing:?}"
    );
    // End the authenticated one: its frontend closes it with 421.
    let id = authed[0]["id"].as_str().unwrap();
    let (ok, _, err) = run_authrelay(&stack.config, &env, &["sessions", "end", id], "");
    assert!(ok, "{err}");
    let (code, text) = a.read();
    assert_eq!(code, 421, "{text}");
    // Rate: 2 connections so far; 6 allowed per 30 s summed over both frontends.
    let mut results = Vec::new();
    for i in 0..6 {
        let target = if i % 2 == 0 { stack.submission } else { sub2 };
        let (_c, code, _) = Raw::connect_from("127.0.0.1", target).expect("connect");
        results.push(code);
    }
    assert_eq!(
        results.iter().filter(|c| **c == 220).count(),
        4,
        "{results:?}"
    );
    assert_eq!(
        results.iter().filter(|c| **c == 421).count(),
        2,
        "{results:?}"
    );
    // Another address is not affected.
    let (_c, code, _) =
        Raw::connect_from("127.0.0.2", stack.submission).expect("connect from 127.0.0.2");
    assert_eq!(code, 220);
}

#[test]
fn sigterm_during_a_large_data_never_acknowledges_and_loses() {
    let (_d, _r, sink, mut stack) = stack("drain", "");
    let mut c = Raw::connect(stack.relay);
    c.cmd("EHLO client.example");
    assert_eq!(c.cmd("MAIL FROM:<a@outside.example>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<test@mailserver.foo.com>").0, 250);
    assert_eq!(c.cmd("DATA").0, 354);
    c.write(b"Subject: drained\r\n\r\n");
    let line = format!("{}\r\n", "y".repeat(500));
    for _ in 0..2000 {
        c.write(line.as_bytes());
    }
    stack.frontend.signal("TERM");
    // New connections are refused while draining (or the port is closed).
    std::thread::sleep(Duration::from_millis(300));
    if let Some((_n, code, _)) = Raw::connect_from("127.0.0.1", stack.relay) {
        assert!(
            code == 421 || code == 0,
            "new connection during drain got {code}"
        );
    }
    for _ in 0..2000 {
        c.write(line.as_bytes());
    }
    let (code, text) = c.cmd(".");
    let msgs = sink.wait_messages(1, Duration::from_secs(20));
    if code == 250 {
        assert_eq!(msgs.len(), 1, "acknowledged ({text}) so it must arrive");
        assert!(msgs[0]["data"].as_str().unwrap().len() > 2_000_000);
    } else {
        assert!(msgs.is_empty(), "not acknowledged ({code}) yet delivered");
    }
    assert_eq!(
        code, 250,
        "with a drain grace of 10 s the transaction in flight finishes: {text}"
    );
    assert!(
        stack.frontend.wait_exit(Duration::from_secs(15)).is_some(),
        "frontend exits after the drain"
    );
    let _ = std::io::stdout().flush();
}

#[test]
fn external_with_a_verified_client_certificate_authenticates_and_relays() {
    let dir = scratch("external");
    let cert = client_certificate(&dir, "relay-client", "mailrelay@foo.example");
    let redis = Redis::start(&dir);
    let sink = Sink::start(&dir);
    let extra = format!(
        "[frontend.tls]\nclient_ca = \"{}\"\n[sasl]\nmechanisms = \"EXTERNAL SCRAM-SHA-256 PLAIN LOGIN\"\ntrusted = \"EXTERNAL SCRAM-SHA-256 PLAIN LOGIN\"\n[sasl.external.map]\n\"mailrelay@foo.example\" = \"mailrelay@mailserver.foo.com\"\n",
        cert.ca_pem.display()
    );
    let stack = Stack::start(
        &dir,
        &redis,
        StackOptions {
            smarthost: Some(sink.addr),
            extra_toml: extra,
            ..Default::default()
        },
    );
    // Without a certificate, EXTERNAL is not offered.
    let mut plain = Raw::connect(stack.submission);
    plain.cmd("EHLO client.example");
    assert_eq!(plain.cmd("STARTTLS").0, 220);
    let mut t = plain.into_tls();
    let (_, ehlo) = t.cmd("EHLO client.example");
    assert!(!ehlo.contains("EXTERNAL"), "{ehlo}");
    // With one, it is, and it logs in as the mapped identity.
    let mut c = Raw::connect(stack.submission);
    c.cmd("EHLO client.example");
    assert_eq!(c.cmd("STARTTLS").0, 220);
    let mut t = c.into_tls_with_client_cert(&cert);
    let (_, ehlo) = t.cmd("EHLO client.example");
    assert!(ehlo.contains("EXTERNAL"), "{ehlo}");
    let (code, text) = t.cmd("AUTH EXTERNAL =");
    assert_eq!(code, 235, "{text}");
    assert_eq!(t.cmd("MAIL FROM:<mailrelay@mailserver.foo.com>").0, 250);
    assert_eq!(
        t.cmd("RCPT TO:<far@outside.example>").0,
        250,
        "EXTERNAL is trusted: relaying allowed"
    );
    assert_eq!(t.cmd("DATA").0, 354);
    assert_eq!(t.cmd("Subject: external\r\n\r\nhi\r\n.").0, 250);
    assert_eq!(sink.wait_messages(1, Duration::from_secs(20)).len(), 1);
    assert!(
        stack
            .frontend
            .log_text()
            .contains("authid=mailrelay@mailserver.foo.com, mech=EXTERNAL"),
        "{}",
        stack.frontend.log_text()
    );
}

#[test]
fn a_replaced_certificate_is_served_to_new_connections_without_restart() {
    let (dir, _r, _s, stack) = stack("cert-reload", "");
    let peer_cert = || {
        let mut c = Raw::connect(stack.submission);
        c.cmd("EHLO client.example");
        assert_eq!(c.cmd("STARTTLS").0, 220);
        c.into_tls().peer_cert()
    };
    let old = peer_cert();
    // Rotate as a Secret update would: new files renamed into place.
    let fresh = rcgen::generate_simple_self_signed(vec!["mailserver.foo.com".to_owned()]).unwrap();
    std::fs::write(dir.join("key.pem.new"), fresh.signing_key.serialize_pem()).unwrap();
    std::fs::write(dir.join("cert.pem.new"), fresh.cert.pem()).unwrap();
    std::fs::rename(dir.join("key.pem.new"), dir.join("key.pem")).unwrap();
    std::fs::rename(dir.join("cert.pem.new"), dir.join("cert.pem")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut now = old.clone();
    while now == old && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(300));
        now = peer_cert();
    }
    assert_eq!(
        now,
        fresh.cert.der().to_vec(),
        "new connections get the new certificate"
    );
}

#[test]
fn limits_recipients_errors_connections_per_address_and_etrn() {
    let extra = "[frontend]\nmax_recipients = 3\nmax_errors = 3\nmax_connections_per_ip = 2\n";
    let (_d, _r, _s, stack) = stack("limits", extra);
    let mut c = Raw::connect(stack.relay);
    c.cmd("EHLO client.example");
    // RFC 5321 §4.5.3.1.8: over the limit is 452 4.5.3, the transaction goes on.
    assert_eq!(c.cmd("MAIL FROM:<a@outside.example>").0, 250);
    for i in 0..3 {
        assert_eq!(c.cmd(&format!("RCPT TO:<u{i}@mailserver.foo.com>")).0, 250);
    }
    let (code, text) = c.cmd("RCPT TO:<u4@mailserver.foo.com>");
    assert_eq!(code, 452, "{text}");
    assert!(text.contains("4.5.3"));
    // ETRN (RFC 1985) asks relay-queue to flush the domain.
    c.cmd("RSET");
    let (code, text) = c.cmd("ETRN outside.example");
    assert_eq!(code, 250, "{text}");
    // A third connection from the same address is refused with 421.
    let _second = Raw::connect(stack.relay);
    let (_third, code, text) = Raw::connect_from("127.0.0.1", stack.relay).unwrap();
    assert_eq!(code, 421, "{text}");
    // Bad commands: after max_errors the server says 421 and closes.
    let mut c2 = c;
    assert_eq!(c2.cmd("BOGUS1").0, 500);
    assert_eq!(c2.cmd("BOGUS2").0, 500);
    let (code, text) = c2.cmd("BOGUS3");
    assert_eq!(code, 421, "{text}");
    assert_eq!(c2.read().0, 0, "connection closed");
}

#[test]
fn proxy_protocol_listener_takes_the_client_address_from_the_balancer() {
    let extra = "[frontend]\ntrusted_networks = [\"192.0.2.0/24\"]\n[[frontend.listeners]]\naddress = \"127.0.0.1:0\"\nrole = \"relay\"\nproxy_protocol = true\n";
    let (_d, _r, sink, mut stack) = stack("proxy-protocol", extra);
    let addr = stack.frontend.addr("smtp relay proxy");
    let header = smtp_frontend_proxy_v2("192.0.2.55:40000", &addr.to_string());
    let (mut c, code) = Raw::connect_with_preamble(addr, &header);
    assert_eq!(code, 220);
    let (_, ehlo) = c.cmd("EHLO client.example");
    assert!(
        ehlo.contains("[192.0.2.55]"),
        "the balancer's client address is the peer: {ehlo}"
    );
    // The trusted network 192.0.2.0/24 applies to the proxied address.
    assert_eq!(c.cmd("MAIL FROM:<a@example.net>").0, 250);
    assert_eq!(
        c.cmd("RCPT TO:<far@outside.example>").0,
        250,
        "relay allowed for the trusted client address"
    );
    assert_eq!(c.cmd("DATA").0, 354);
    assert_eq!(c.cmd("Subject: proxied\r\n\r\nx\r\n.").0, 250);
    let msgs = sink.wait_messages(1, Duration::from_secs(20));
    assert!(
        msgs[0]["data"].as_str().unwrap().contains("([192.0.2.55])"),
        "Received: names the real client"
    );
    // Without a header the connection is closed, no greeting.
    let (_c, code) = Raw::connect_with_preamble(addr, b"EHLO sneaky.example\r\n");
    assert_eq!(code, 0, "no PROXY header: closed without a greeting");
    // The plain relay listener does not trust the same client.
    let mut plain = Raw::connect(stack.relay);
    plain.cmd("EHLO client.example");
    plain.cmd("MAIL FROM:<a@example.net>");
    assert_eq!(plain.cmd("RCPT TO:<far@outside.example>").0, 550);
}

/// A listener on `[::]` also takes IPv4 clients, which the kernel hands over
/// as `::ffff:127.0.0.1`: they are still the 127.0.0.0/8 of
/// `trusted_networks` and `[127.0.0.1]` in `Received:`.
#[test]
fn a_dual_stack_listener_sees_ipv4_clients_as_ipv4() {
    let extra = "[frontend]\ntrusted_networks = [\"127.0.0.0/8\"]\n[[frontend.listeners]]\naddress = \"[::]:0\"\nrole = \"relay\"\n";
    let (_d, _r, sink, mut stack) = stack("dual-stack", extra);
    let line = stack.frontend.wait_line("listening on [::]:");
    let port: u16 = line
        .split("listening on [::]:")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?} (does this machine have IPv6?)"));
    let mut c = Raw::connect(([127, 0, 0, 1], port).into());
    let (_, ehlo) = c.cmd("EHLO client.example");
    assert!(ehlo.contains("[127.0.0.1]"), "the peer is IPv4: {ehlo}");
    assert_eq!(c.cmd("MAIL FROM:<a@example.net>").0, 250);
    assert_eq!(
        c.cmd("RCPT TO:<far@outside.example>").0,
        250,
        "relay allowed for the trusted IPv4 network"
    );
    assert_eq!(c.cmd("DATA").0, 354);
    assert_eq!(c.cmd("Subject: dual stack\r\n\r\nx\r\n.").0, 250);
    let msgs = sink.wait_messages(1, Duration::from_secs(20));
    let data = msgs[0]["data"].as_str().unwrap();
    assert!(
        data.contains("([127.0.0.1])") && !data.contains("::ffff:"),
        "Received: names the IPv4 client: {data}"
    );
}

/// A PROXY v2 header, as a load balancer sends it.
fn smtp_frontend_proxy_v2(source: &str, dest: &str) -> Vec<u8> {
    let s: std::net::SocketAddr = source.parse().unwrap();
    let d: std::net::SocketAddr = dest.parse().unwrap();
    let (std::net::IpAddr::V4(si), std::net::IpAddr::V4(di)) = (s.ip(), d.ip()) else {
        panic!("v4 only")
    };
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&si.octets());
    h.extend_from_slice(&di.octets());
    h.extend_from_slice(&s.port().to_be_bytes());
    h.extend_from_slice(&d.port().to_be_bytes());
    h
}
