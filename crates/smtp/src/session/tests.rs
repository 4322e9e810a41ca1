//! One test per rule the session enforces, on bytes: what the client sends,
//! what it reads back, and what the I/O layer is asked to do.

use std::net::IpAddr;
use std::sync::Arc;

use authrelay_sasl::Mechanism;

use super::*;

const PEER: &str = "192.0.2.10";
const REFUSED_PEER: &str = "192.0.2.66";

/// The relay policy in miniature: `relay.example` is local, everything
/// else needs a trusted AUTH; one sender and one network are refused.
struct TestPolicy;

impl Policy for TestPolicy {
    fn check_connect(&self, ip: IpAddr) -> Result<(), Reply> {
        if ip.to_string() == REFUSED_PEER {
            return Err(Reply::new(554, "5.7.1", "Access denied"));
        }
        Ok(())
    }
    fn check_sender(&self, address: &str) -> Result<(), Reply> {
        if address == "spammer@bad.example" {
            return Err(Reply::new(550, "5.7.1", "Sender refused"));
        }
        Ok(())
    }
    fn check_recipient(&self, address: &str, client: Client) -> Result<(), Reply> {
        if address.ends_with("@relay.example") || client.trusted_auth {
            Ok(())
        } else {
            Err(Reply::relaying_denied())
        }
    }
}

fn settings() -> Arc<Settings> {
    Arc::new(Settings {
        hostname: "relay.example".into(),
        max_message_size: 1000,
        max_recipients: 2,
        max_errors: 3,
        max_auth_attempts: 2,
        starttls: true,
        mechanisms_with_tls: vec![Mechanism::ScramSha256, Mechanism::Plain, Mechanism::Login],
        traceparent_ok: |v| v.len() == 55 && v.starts_with("00-"),
        policy: Arc::new(TestPolicy),
    })
}

fn params() -> SessionParams {
    SessionParams {
        peer: PEER.parse().unwrap(),
        requires_auth: false,
        implicit_tls: false,
        xtrace: false,
        // Plaintext mechanisms wait for TLS.
        mechanisms: vec![Mechanism::ScramSha256],
    }
}

/// A session past its greeting, output empty.
fn session_with(params: SessionParams) -> Session {
    let mut s = Session::new(settings(), params);
    assert_eq!(s.connected(), Action::Continue);
    take(&mut s);
    s
}

fn session() -> Session {
    session_with(params())
}

fn take(s: &mut Session) -> String {
    let out = String::from_utf8(s.output().to_vec()).unwrap();
    s.output_written();
    out
}

/// Send one command line; the action and the bytes the client reads.
fn send(s: &mut Session, line: &str) -> (Action, String) {
    let action = s.line(Line::Complete(line.as_bytes().to_vec()));
    (action, take(s))
}

/// Send and expect read-on and this reply.
fn says(s: &mut Session, line: &str, want: &str) {
    assert_eq!(send(s, line), (Action::Continue, want.to_owned()), "{line}");
}

fn authenticate(s: &mut Session, trusted: bool) {
    s.auth_finished(Ok(Authenticated {
        authcid: "test@relay.example".into(),
        authzid: "test@relay.example".into(),
        mechanism: "SCRAM-SHA-256".into(),
        bits: 0,
        trusted,
    }));
    assert_eq!(take(s), "235 2.7.0 Authentication successful\r\n");
}

fn in_transaction() -> Session {
    let mut s = session();
    send(&mut s, "EHLO client.example");
    says(
        &mut s,
        "MAIL FROM:<a@relay.example>",
        "250 2.1.0 Sender ok\r\n",
    );
    says(
        &mut s,
        "RCPT TO:<b@relay.example>",
        "250 2.1.5 Recipient ok\r\n",
    );
    s
}

fn auth(s: &mut Session, line: &str) -> AuthStart {
    let (action, out) = send(s, line);
    assert_eq!(out, "");
    match action {
        Action::Auth(cmd) => s.begin_auth(&cmd),
        other => panic!("{line}: {other:?}"),
    }
}

// ---- RFC 5321 ----

#[test]
fn rfc5321_3_1_greeting_is_220_with_our_name() {
    let mut s = Session::new(settings(), params());
    assert_eq!(s.connected(), Action::Continue);
    assert_eq!(take(&mut s), "220 relay.example ESMTP authrelay ready\r\n");
}

#[test]
fn rfc5321_3_1_refused_client_gets_the_policy_reply_and_is_closed() {
    let mut s = Session::new(
        settings(),
        SessionParams {
            peer: REFUSED_PEER.parse().unwrap(),
            ..params()
        },
    );
    assert_eq!(s.connected(), Action::Close);
    assert_eq!(take(&mut s), "554 5.7.1 Access denied\r\n");
}

#[test]
fn rfc5321_4_1_1_1_ehlo_is_multiline_250_with_extensions() {
    let mut s = session();
    says(
        &mut s,
        "EHLO client.example",
        "250-relay.example Hello client.example [192.0.2.10], pleased to meet you\r\n\
         250-ENHANCEDSTATUSCODES\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 1000\r\n\
         250-DSN\r\n250-SMTPUTF8\r\n250-CHUNKING\r\n250-STARTTLS\r\n\
         250-AUTH SCRAM-SHA-256\r\n250-ETRN\r\n250 HELP\r\n",
    );
}

#[test]
fn rfc5321_4_1_1_1_helo_is_one_line_without_extensions() {
    let mut s = session();
    says(
        &mut s,
        "HELO client.example",
        "250 relay.example Hello client.example [192.0.2.10], pleased to meet you\r\n",
    );
}

#[test]
fn rfc5321_4_1_4_mail_before_helo_is_503() {
    let mut s = session();
    says(
        &mut s,
        "MAIL FROM:<a@relay.example>",
        "503 5.5.1 Polite people say HELO first\r\n",
    );
}

#[test]
fn rfc5321_4_1_4_rcpt_before_mail_is_503() {
    let mut s = session();
    send(&mut s, "EHLO client.example");
    says(
        &mut s,
        "RCPT TO:<b@relay.example>",
        "503 5.5.1 Need MAIL before RCPT\r\n",
    );
}

#[test]
fn rfc5321_4_1_4_data_before_mail_is_503() {
    let mut s = session();
    send(&mut s, "EHLO client.example");
    says(&mut s, "DATA", "503 5.5.1 Need MAIL command\r\n");
}

#[test]
fn rfc5321_4_1_4_second_mail_in_a_transaction_is_503() {
    let mut s = in_transaction();
    says(
        &mut s,
        "MAIL FROM:<c@relay.example>",
        "503 5.5.1 Sender already specified\r\n",
    );
}

#[test]
fn rfc5321_4_1_4_rset_abandons_the_transaction() {
    let mut s = in_transaction();
    says(&mut s, "RSET", "250 2.0.0 Reset state\r\n");
    assert!(s.transaction().is_none());
    says(
        &mut s,
        "RCPT TO:<b@relay.example>",
        "503 5.5.1 Need MAIL before RCPT\r\n",
    );
}

#[test]
fn rfc5321_4_1_4_ehlo_abandons_the_transaction() {
    let mut s = in_transaction();
    send(&mut s, "EHLO client.example");
    assert!(s.transaction().is_none());
    says(&mut s, "DATA", "503 5.5.1 Need MAIL command\r\n");
}

#[test]
fn rfc5321_3_3_data_after_rcpt_is_354_and_the_body_goes_to_the_queue() {
    let mut s = in_transaction();
    assert_eq!(
        send(&mut s, "DATA"),
        (
            Action::ReceiveData,
            "354 Enter mail, end with \".\" on a line by itself\r\n".into()
        )
    );
    s.message_finished(Delivery::Queued { id: "Q1".into() });
    assert_eq!(
        take(&mut s),
        "250 2.0.0 Q1 Message accepted for delivery\r\n"
    );
    assert!(s.transaction().is_none());
}

#[test]
fn rfc5321_4_2_5_queue_unavailable_is_451_and_disk_full_is_452() {
    let mut s = in_transaction();
    send(&mut s, "DATA");
    s.message_finished(Delivery::Unavailable);
    assert_eq!(
        take(&mut s),
        "451 4.3.0 Temporary failure queueing message, try again later\r\n"
    );
    let mut s = in_transaction();
    send(&mut s, "DATA");
    s.message_finished(Delivery::StorageFull);
    assert_eq!(
        take(&mut s),
        "452 4.3.1 Insufficient system storage, try again later\r\n"
    );
}

#[test]
fn rfc2920_3_1_data_after_every_rcpt_failed_is_554() {
    let mut s = session();
    send(&mut s, "EHLO client.example");
    send(&mut s, "MAIL FROM:<a@relay.example>");
    says(
        &mut s,
        "RCPT TO:<x@elsewhere.example>",
        "550 5.7.1 Relaying denied\r\n",
    );
    says(&mut s, "DATA", "554 5.5.1 No valid recipients\r\n");
}

#[test]
fn rfc5321_3_6_2_rcpt_outside_without_auth_is_relaying_denied() {
    let mut s = session();
    send(&mut s, "EHLO client.example");
    send(&mut s, "MAIL FROM:<a@relay.example>");
    says(
        &mut s,
        "RCPT TO:<x@elsewhere.example>",
        "550 5.7.1 Relaying denied\r\n",
    );
}

#[test]
fn rfc5321_3_6_2_rcpt_outside_after_trusted_auth_is_accepted() {
    let mut s = session();
    send(&mut s, "EHLO client.example");
    authenticate(&mut s, true);
    send(&mut s, "MAIL FROM:<a@relay.example>");
    s.counted(Verdict::Pass);
    take(&mut s);
    send(&mut s, "RCPT TO:<x@elsewhere.example>");
    s.counted(Verdict::Pass);
    assert_eq!(take(&mut s), "250 2.1.5 Recipient ok\r\n");
}

#[test]
fn rfc5321_4_5_3_1_8_recipients_over_the_limit_are_452() {
    let mut s = in_transaction();
    says(
        &mut s,
        "RCPT TO:<c@relay.example>",
        "250 2.1.5 Recipient ok\r\n",
    );
    says(
        &mut s,
        "RCPT TO:<d@relay.example>",
        "452 4.5.3 Too many recipients\r\n",
    );
    assert_eq!(s.transaction().unwrap().rcpts.len(), 2);
}

#[test]
fn rfc1870_6_mail_size_over_the_maximum_is_552() {
    let mut s = session();
    send(&mut s, "EHLO client.example");
    says(
        &mut s,
        "MAIL FROM:<a@relay.example> SIZE=1001",
        "552 5.3.4 Message size exceeds fixed maximum message size\r\n",
    );
    says(
        &mut s,
        "MAIL FROM:<a@relay.example> SIZE=1000",
        "250 2.1.0 Sender ok\r\n",
    );
}

#[test]
fn rfc5321_mail_from_a_refused_sender_gets_the_policy_reply() {
    let mut s = session();
    send(&mut s, "EHLO client.example");
    says(
        &mut s,
        "MAIL FROM:<spammer@bad.example>",
        "550 5.7.1 Sender refused\r\n",
    );
    assert!(s.transaction().is_none());
}

#[test]
fn rfc5321_4_2_4_unknown_command_is_500() {
    let mut s = session();
    says(&mut s, "FROBNICATE", "500 5.5.1 Command unrecognized\r\n");
}

#[test]
fn rfc5321_4_3_2_syntax_error_in_parameters_is_501() {
    let mut s = session();
    send(&mut s, "EHLO client.example");
    let (action, out) = send(&mut s, "MAIL FROM:");
    assert_eq!(action, Action::Continue);
    assert!(out.starts_with("501 5.5.4 Syntax: "), "{out}");
}

#[test]
fn rfc5321_4_1_1_11_unknown_mail_parameter_is_555() {
    let mut s = session();
    send(&mut s, "EHLO client.example");
    let (_, out) = send(&mut s, "MAIL FROM:<a@relay.example> FROB=1");
    assert!(out.starts_with("555 5.5.4 Unsupported parameter"), "{out}");
}

#[test]
fn rfc5321_2_3_8_bare_lf_inside_a_command_is_500() {
    let mut s = session();
    says(
        &mut s,
        "NOOP\nQUIT",
        "500 5.5.2 Invalid characters in command\r\n",
    );
}

#[test]
fn rfc5321_4_5_3_1_4_over_long_line_is_500() {
    let mut s = session();
    assert_eq!(s.line(Line::TooLong), Action::Continue);
    assert_eq!(take(&mut s), "500 5.5.2 Line too long\r\n");
}

#[test]
fn rfc5321_4_2_2_too_many_bad_commands_is_421_and_closes() {
    let mut s = session();
    says(&mut s, "BAD1", "500 5.5.1 Command unrecognized\r\n");
    assert_eq!(s.line(Line::TooLong), Action::Continue);
    take(&mut s);
    assert_eq!(
        send(&mut s, "BAD3"),
        (
            Action::Close,
            "421 4.7.0 Too many errors, closing connection\r\n".into()
        )
    );
}

#[test]
fn rfc5321_4_1_1_10_quit_is_221_and_closes() {
    let mut s = session();
    assert_eq!(
        send(&mut s, "QUIT"),
        (
            Action::Close,
            "221 2.0.0 relay.example closing connection\r\n".into()
        )
    );
}

#[test]
fn rfc5321_4_1_1_9_noop_is_250() {
    let mut s = session();
    says(&mut s, "NOOP", "250 2.0.0 OK\r\n");
}

#[test]
fn rfc5321_4_1_1_8_help_is_214() {
    let mut s = session();
    let (_, out) = send(&mut s, "HELP");
    assert!(out.starts_with("214-2.0.0 This is authrelay"), "{out}");
    assert!(out.ends_with("214 2.0.0 End of HELP info\r\n"), "{out}");
}

#[test]
fn rfc5321_3_5_3_vrfy_is_252_and_says_nothing_about_users() {
    let mut s = session();
    says(
        &mut s,
        "VRFY root",
        "252 2.5.2 Cannot VRFY user; try RCPT to attempt delivery\r\n",
    );
}

#[test]
fn rfc5321_3_5_3_expn_is_502() {
    let mut s = session();
    says(
        &mut s,
        "EXPN staff",
        "502 5.7.0 Sorry, we do not allow this operation\r\n",
    );
}

#[test]
fn rfc5321_4_5_3_2_timeout_is_421_4_4_2() {
    let mut s = session();
    s.close(Closing::Timeout);
    assert_eq!(
        take(&mut s),
        "421 4.4.2 relay.example Timeout waiting for command, closing connection\r\n"
    );
}

#[test]
fn rfc5321_3_8_shutdown_is_421_4_3_2() {
    let mut s = session();
    s.close(Closing::ShuttingDown);
    assert_eq!(
        take(&mut s),
        "421 4.3.2 relay.example Service shutting down, closing connection\r\n"
    );
}

#[test]
fn rfc1985_etrn_asks_the_queue_and_answers_for_the_node() {
    let mut s = session();
    assert_eq!(
        send(&mut s, "ETRN @example.org"),
        (Action::Etrn("example.org".into()), String::new())
    );
    s.etrn_finished("example.org", true);
    assert_eq!(
        take(&mut s),
        "250 2.0.0 Queuing for node example.org started\r\n"
    );
    s.etrn_finished("example.org", false);
    assert_eq!(
        take(&mut s),
        "458 4.3.0 Unable to queue messages for node example.org\r\n"
    );
}

// ---- RFC 3207 STARTTLS ----

#[test]
fn rfc3207_4_starttls_is_220_and_starts_tls() {
    let mut s = session();
    send(&mut s, "EHLO client.example");
    assert_eq!(
        send(&mut s, "STARTTLS"),
        (Action::StartTls, "220 2.0.0 Ready to start TLS\r\n".into())
    );
}

#[test]
fn rfc3207_4_starttls_with_a_parameter_is_501() {
    let mut s = session();
    says(&mut s, "STARTTLS now", "501 5.5.4 Syntax: STARTTLS\r\n");
}

#[test]
fn rfc3207_4_starttls_without_a_certificate_is_454() {
    let mut settings = Arc::into_inner(settings()).unwrap();
    settings.starttls = false;
    let mut s = Session::new(Arc::new(settings), params());
    s.connected();
    take(&mut s);
    let (_, ehlo) = send(&mut s, "EHLO client.example");
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    says(&mut s, "STARTTLS", "454 4.7.0 TLS not available\r\n");
}

#[test]
fn rfc3207_4_starttls_under_tls_is_503() {
    let mut s = session();
    send(&mut s, "STARTTLS");
    s.tls_started(vec![Mechanism::Plain]);
    says(&mut s, "STARTTLS", "503 5.5.1 TLS already active\r\n");
}

#[test]
fn rfc3207_4_2_tls_forgets_helo_auth_and_the_transaction() {
    let mut s = in_transaction();
    authenticate(&mut s, true);
    send(&mut s, "STARTTLS");
    assert_eq!(s.tls_started(vec![Mechanism::Plain]), Action::Continue);
    assert_eq!(take(&mut s), "");
    assert!(s.helo().is_none() && s.authenticated().is_none());
    assert!(s.transaction().is_none());
    says(
        &mut s,
        "MAIL FROM:<a@relay.example>",
        "503 5.5.1 Polite people say HELO first\r\n",
    );
}

#[test]
fn rfc3207_4_2_ehlo_under_tls_offers_no_starttls_and_the_tls_mechanisms() {
    let mut s = session();
    send(&mut s, "STARTTLS");
    s.tls_started(vec![Mechanism::ScramSha256, Mechanism::Plain]);
    let (_, out) = send(&mut s, "EHLO client.example");
    assert!(!out.contains("STARTTLS"), "{out}");
    assert!(out.contains("250-AUTH SCRAM-SHA-256 PLAIN\r\n"), "{out}");
}

#[test]
fn rfc8314_implicit_tls_greets_after_the_handshake() {
    let mut s = Session::new(
        settings(),
        SessionParams {
            implicit_tls: true,
            ..params()
        },
    );
    assert_eq!(s.connected(), Action::StartTls);
    assert_eq!(take(&mut s), "");
    assert_eq!(s.tls_started(vec![Mechanism::Plain]), Action::Continue);
    assert_eq!(take(&mut s), "220 relay.example ESMTP authrelay ready\r\n");
    says(&mut s, "STARTTLS", "503 5.5.1 TLS already active\r\n");
}

// ---- RFC 4954 AUTH ----

#[test]
fn rfc4954_4_auth_before_ehlo_is_503() {
    let mut s = session();
    assert_eq!(
        auth(&mut s, "AUTH SCRAM-SHA-256"),
        AuthStart::Done(Action::Continue)
    );
    assert_eq!(take(&mut s), "503 5.5.1 Send EHLO first\r\n");
}

#[test]
fn rfc4954_4_auth_after_helo_is_503() {
    let mut s = session();
    send(&mut s, "HELO client.example");
    auth(&mut s, "AUTH SCRAM-SHA-256");
    assert_eq!(take(&mut s), "503 5.5.1 Send EHLO first\r\n");
}

#[test]
fn rfc4954_4_auth_after_success_is_503() {
    let mut s = session();
    send(&mut s, "EHLO client.example");
    authenticate(&mut s, true);
    auth(&mut s, "AUTH SCRAM-SHA-256");
    assert_eq!(take(&mut s), "503 5.5.1 Already authenticated\r\n");
}

#[test]
fn rfc4954_4_auth_during_a_mail_transaction_is_503() {
    let mut s = in_transaction();
    auth(&mut s, "AUTH SCRAM-SHA-256");
    assert_eq!(
        take(&mut s),
        "503 5.5.1 AUTH not permitted during a mail transaction\r\n"
    );
}

#[test]
fn rfc4954_4_unknown_mechanism_is_504() {
    let mut s = session();
    send(&mut s, "EHLO client.example");
    auth(&mut s, "AUTH X-UNKNOWN");
    assert_eq!(
        take(&mut s),
        "504 5.5.4 Unrecognized authentication type\r\n"
    );
}

#[test]
fn rfc4954_4_known_but_unoffered_mechanism_is_504() {
    let mut s = session();
    send(&mut s, "EHLO client.example");
    auth(&mut s, "AUTH CRAM-MD5");
    assert_eq!(
        take(&mut s),
        "504 5.5.4 Unrecognized authentication type\r\n"
    );
}

#[test]
fn rfc4954_6_plaintext_mechanism_without_tls_is_538() {
    let mut s = session();
    send(&mut s, "EHLO client.example");
    auth(&mut s, "AUTH PLAIN AGEAYg==");
    assert_eq!(
        take(&mut s),
        "538 5.7.11 Encryption required for requested authentication mechanism\r\n"
    );
}

#[test]
fn rfc4954_4_initial_response_is_decoded() {
    let mut s = session();
    send(&mut s, "EHLO client.example");
    assert_eq!(
        auth(&mut s, "AUTH scram-sha-256 biwsbj11LHI9YWJj"),
        AuthStart::Exchange {
            mechanism: Mechanism::ScramSha256,
            initial_response: Some(b"n,,n=u,r=abc".to_vec()),
        }
    );
}

#[test]
fn rfc4954_4_initial_response_equals_sign_is_empty() {
    let mut s = session();
    send(&mut s, "EHLO client.example");
    assert_eq!(
        auth(&mut s, "AUTH SCRAM-SHA-256 ="),
        AuthStart::Exchange {
            mechanism: Mechanism::ScramSha256,
            initial_response: Some(Vec::new()),
        }
    );
}

#[test]
fn rfc4954_4_initial_response_not_base64_is_501() {
    let mut s = session();
    send(&mut s, "EHLO client.example");
    auth(&mut s, "AUTH SCRAM-SHA-256 !!!");
    assert_eq!(take(&mut s), "501 5.5.2 Cannot decode response\r\n");
}

#[test]
fn rfc4954_4_challenge_is_334_base64_without_enhanced_code() {
    let mut s = session();
    s.auth_challenge(b"Username:");
    assert_eq!(take(&mut s), "334 VXNlcm5hbWU6\r\n");
    s.auth_challenge(b"");
    assert_eq!(take(&mut s), "334 \r\n");
}

#[test]
fn rfc4954_4_answer_is_base64_decoded() {
    let mut s = session();
    assert_eq!(
        s.auth_answer(Line::Complete(b"dGVzdA==".to_vec())),
        Some(b"test".to_vec())
    );
    assert_eq!(take(&mut s), "");
}

#[test]
fn rfc4954_4_star_cancels_the_exchange_with_501() {
    let mut s = session();
    assert_eq!(s.auth_answer(Line::Complete(b"*".to_vec())), None);
    assert_eq!(take(&mut s), "501 5.0.0 Authentication cancelled\r\n");
}

#[test]
fn rfc4954_4_answer_not_base64_is_501() {
    let mut s = session();
    assert_eq!(s.auth_answer(Line::Complete(b"not base64!".to_vec())), None);
    assert_eq!(take(&mut s), "501 5.5.2 Cannot decode response\r\n");
}

#[test]
fn rfc4954_4_answer_over_the_line_limit_is_500() {
    let mut s = session();
    assert_eq!(s.auth_answer(Line::TooLong), None);
    assert_eq!(
        take(&mut s),
        "500 5.5.6 Authentication Exchange line is too long\r\n"
    );
}

#[test]
fn rfc4954_6_success_is_235_and_the_session_is_authenticated() {
    let mut s = session();
    send(&mut s, "EHLO client.example");
    authenticate(&mut s, false);
    assert_eq!(s.authenticated().unwrap().authzid, "test@relay.example");
}

#[test]
fn rfc4954_6_failures_are_535_454_and_the_mechanism_codes() {
    for (failure, want) in [
        (
            AuthFailure::InvalidCredentials,
            "535 5.7.8 Authentication credentials invalid\r\n",
        ),
        (
            AuthFailure::ChannelBinding,
            "535 5.7.8 Authentication failed: channel binding mismatch\r\n",
        ),
        (
            AuthFailure::Temporary,
            "454 4.7.0 Temporary authentication failure\r\n",
        ),
        (
            AuthFailure::Malformed,
            "501 5.5.2 Cannot decode response\r\n",
        ),
        (
            AuthFailure::UnsupportedMechanism,
            "504 5.5.4 Unrecognized authentication type\r\n",
        ),
        (
            AuthFailure::EncryptionRequired,
            "538 5.7.11 Encryption required for requested authentication mechanism\r\n",
        ),
    ] {
        let mut s = session();
        s.auth_finished(Err(failure));
        assert_eq!(take(&mut s), want);
        assert!(s.authenticated().is_none());
    }
}

#[test]
fn rfc4954_4_too_many_auth_attempts_is_421_and_closes() {
    let mut s = session();
    send(&mut s, "EHLO client.example");
    for _ in 0..2 {
        assert!(matches!(
            auth(&mut s, "AUTH SCRAM-SHA-256"),
            AuthStart::Exchange { .. }
        ));
        s.auth_finished(Err(AuthFailure::InvalidCredentials));
        take(&mut s);
    }
    assert_eq!(
        auth(&mut s, "AUTH SCRAM-SHA-256"),
        AuthStart::Done(Action::Close)
    );
    assert_eq!(
        take(&mut s),
        "421 4.7.0 Too many authentication attempts, closing connection\r\n"
    );
}

#[test]
fn rfc4954_mail_on_a_submission_listener_without_auth_is_530() {
    let mut s = session_with(SessionParams {
        requires_auth: true,
        ..params()
    });
    send(&mut s, "EHLO client.example");
    says(
        &mut s,
        "MAIL FROM:<a@relay.example>",
        "530 5.7.0 Authentication required\r\n",
    );
    authenticate(&mut s, true);
    send(&mut s, "MAIL FROM:<a@relay.example>");
    s.counted(Verdict::Pass);
    assert_eq!(take(&mut s), "250 2.1.0 Sender ok\r\n");
}

#[test]
fn rfc4954_5_auth_param_is_the_trusted_authzid_never_the_clients_claim() {
    assert_eq!(auth_param(Some(("test@r", true)), Some("<>")), "test@r");
    assert_eq!(auth_param(Some(("test@r", true)), None), "test@r");
    assert_eq!(auth_param(Some(("test@r", false)), Some("boss@r")), "<>");
    assert_eq!(auth_param(None, Some("boss@r")), "<>");
    assert_eq!(auth_param(None, None), "");
    let mut s = session();
    send(&mut s, "EHLO client.example");
    authenticate(&mut s, false);
    send(
        &mut s,
        "MAIL FROM:<a@relay.example> AUTH=boss@relay.example",
    );
    s.counted(Verdict::Pass);
    assert_eq!(s.auth_param(), "<>");
}

// ---- RFC 3030 CHUNKING ----

#[test]
fn rfc3030_2_bdat_before_mail_is_read_then_answered_503() {
    let mut s = session();
    send(&mut s, "EHLO client.example");
    assert_eq!(
        send(&mut s, "BDAT 5"),
        (Action::SkipChunk { size: 5 }, String::new())
    );
    s.chunk_skipped();
    assert_eq!(take(&mut s), "503 5.5.1 Need MAIL command\r\n");
}

#[test]
fn rfc3030_2_bdat_without_valid_recipients_is_554() {
    let mut s = session();
    send(&mut s, "EHLO client.example");
    send(&mut s, "MAIL FROM:<a@relay.example>");
    assert_eq!(
        send(&mut s, "BDAT 5 LAST"),
        (Action::SkipChunk { size: 5 }, String::new())
    );
    s.chunk_skipped();
    assert_eq!(take(&mut s), "554 5.5.1 No valid recipients\r\n");
}

#[test]
fn rfc3030_2_chunks_are_acknowledged_with_their_size() {
    let mut s = in_transaction();
    assert_eq!(
        send(&mut s, "BDAT 5"),
        (
            Action::ReceiveChunk {
                size: 5,
                last: false,
                begin: true
            },
            String::new()
        )
    );
    s.chunk_received(5, false);
    assert_eq!(take(&mut s), "250 2.0.0 5 octets received\r\n");
    assert_eq!(
        send(&mut s, "BDAT 3 LAST"),
        (
            Action::ReceiveChunk {
                size: 3,
                last: true,
                begin: false
            },
            String::new()
        )
    );
    s.message_finished(Delivery::Queued { id: "Q2".into() });
    assert_eq!(
        take(&mut s),
        "250 2.0.0 Q2 Message accepted for delivery\r\n"
    );
}

#[test]
fn rfc3030_2_data_after_bdat_is_503() {
    let mut s = in_transaction();
    send(&mut s, "BDAT 5");
    s.chunk_received(5, false);
    take(&mut s);
    says(&mut s, "DATA", "503 5.5.1 DATA not allowed after BDAT\r\n");
}

#[test]
fn rfc3030_2_rset_discards_a_chunked_message() {
    let mut s = in_transaction();
    send(&mut s, "BDAT 5");
    s.chunk_received(5, false);
    take(&mut s);
    assert_eq!(
        send(&mut s, "RSET"),
        (Action::DiscardMessage, "250 2.0.0 Reset state\r\n".into())
    );
    assert!(s.transaction().is_none());
}

#[test]
fn rfc3030_4_chunk_over_the_size_is_552_and_ends_the_transaction() {
    let mut s = in_transaction();
    send(&mut s, "BDAT 2000");
    s.chunk_received(2000, true);
    assert_eq!(
        take(&mut s),
        "552 5.3.4 Message size exceeds fixed maximum message size\r\n"
    );
    assert_eq!(
        send(&mut s, "BDAT 5"),
        (Action::SkipChunk { size: 5 }, String::new())
    );
}

// ---- XTRACE (ours) ----

const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

#[test]
fn xtrace_is_an_unknown_command_for_clients_not_allowed_it() {
    let mut s = session();
    says(
        &mut s,
        &format!("XTRACE {TRACEPARENT}"),
        "500 5.5.1 Command unrecognized\r\n",
    );
}

#[test]
fn xtrace_is_taken_once_and_a_malformed_value_is_501() {
    let mut s = session_with(SessionParams {
        xtrace: true,
        ..params()
    });
    let (_, ehlo) = send(&mut s, "EHLO client.example");
    assert!(ehlo.contains("250-XTRACE\r\n"), "{ehlo}");
    says(
        &mut s,
        "XTRACE bogus",
        "501 5.5.4 Syntax: XTRACE traceparent\r\n",
    );
    says(
        &mut s,
        &format!("XTRACE {TRACEPARENT}"),
        "250 2.0.0 Trace continued\r\n",
    );
    assert_eq!(s.xtrace(), Some(TRACEPARENT));
    says(
        &mut s,
        &format!("XTRACE {TRACEPARENT}"),
        "503 5.5.1 XTRACE already given\r\n",
    );
}

// ---- Account sending limits (the frontend's `[limits.per_user]`) ----

fn authenticated() -> Session {
    let mut s = session();
    send(&mut s, "EHLO client.example");
    authenticate(&mut s, true);
    s
}

#[test]
fn limits_mail_of_an_authenticated_session_is_answered_after_its_count() {
    let mut s = authenticated();
    assert_eq!(
        send(&mut s, "MAIL FROM:<a@relay.example>"),
        (Action::Count(Counted::Message), String::new())
    );
    assert_eq!(s.counted(Verdict::Pass), Action::Continue);
    assert_eq!(take(&mut s), "250 2.1.0 Sender ok\r\n");
    assert!(s.transaction().is_some());
}

#[test]
fn limits_rcpt_of_an_authenticated_session_is_answered_after_its_count() {
    let mut s = authenticated();
    send(&mut s, "MAIL FROM:<a@relay.example>");
    s.counted(Verdict::Pass);
    take(&mut s);
    assert_eq!(
        send(&mut s, "RCPT TO:<x@elsewhere.example>"),
        (Action::Count(Counted::Recipient), String::new())
    );
    s.counted(Verdict::Pass);
    assert_eq!(take(&mut s), "250 2.1.5 Recipient ok\r\n");
    assert_eq!(s.transaction().unwrap().rcpts.len(), 1);
}

#[test]
fn limits_count_only_what_the_other_checks_accept() {
    let mut s = authenticated();
    says(
        &mut s,
        "MAIL FROM:<spammer@bad.example>",
        "550 5.7.1 Sender refused\r\n",
    );
    let mut s = session();
    send(&mut s, "EHLO client.example");
    // Unauthenticated sessions have no account to count against.
    says(
        &mut s,
        "MAIL FROM:<a@relay.example>",
        "250 2.1.0 Sender ok\r\n",
    );
}

#[test]
fn limits_refusal_is_the_limits_reply_and_the_session_goes_on() {
    let mut s = authenticated();
    send(&mut s, "MAIL FROM:<a@relay.example>");
    let refusal = Reply::new(450, "4.7.1", "Too many messages");
    assert_eq!(s.counted(Verdict::Refuse(refusal)), Action::Continue);
    assert_eq!(take(&mut s), "450 4.7.1 Too many messages\r\n");
    assert!(s.transaction().is_none());
}

#[test]
fn limits_suspension_ends_the_transaction_and_closes() {
    let mut s = authenticated();
    send(&mut s, "MAIL FROM:<a@relay.example>");
    s.counted(Verdict::Pass);
    take(&mut s);
    send(&mut s, "RCPT TO:<b@relay.example>");
    let suspended = Reply::new(421, "4.7.1", "Account suspended");
    assert_eq!(s.counted(Verdict::Close(suspended)), Action::Close);
    assert_eq!(take(&mut s), "421 4.7.1 Account suspended\r\n");
    assert!(s.transaction().is_none());
}

#[test]
fn limits_suspended_account_is_refused_after_its_good_credentials() {
    let mut s = session();
    send(&mut s, "EHLO client.example");
    let suspended = Reply::new(525, "5.7.13", "Account suspended");
    s.auth_finished(Err(AuthFailure::Refused(suspended)));
    assert_eq!(take(&mut s), "525 5.7.13 Account suspended\r\n");
    assert!(s.authenticated().is_none());
}

#[test]
fn rfc5321_3_8_session_ended_from_outside_says_why() {
    let mut s = session();
    s.close(Closing::EndedByOperator);
    assert_eq!(
        take(&mut s),
        "421 4.7.0 relay.example Session ended by operator, closing connection\r\n"
    );
    s.close(Closing::Ended(Reply::new(
        421,
        "4.7.1",
        "Account suspended",
    )));
    assert_eq!(take(&mut s), "421 4.7.1 Account suspended\r\n");
}
