//! Property tests for the sans-IO SMTP pieces: whatever a client sends, parsing
//! never panics; however TCP segments it, framing gives the same lines; and what
//! we print (replies, 334 challenges) parses back to what we meant.

use authrelay_smtp::command::{Command, Line, LineBuffer, ParseError, parse};
use authrelay_smtp::reply::Reply;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use proptest::prelude::*;

/// An RFC 5321 §4.2 reply reader, as a client has one: (code, lines without
/// code and separator). Panics on anything that is not a well-formed reply.
fn read_reply(wire: &[u8]) -> (u16, Vec<String>) {
    let text = std::str::from_utf8(wire).expect("replies are text");
    let body = text.strip_suffix("\r\n").expect("a reply ends in CRLF");
    let lines: Vec<&str> = body.split("\r\n").collect();
    let mut code = None;
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        assert!(line.len() >= 4, "short reply line {line:?}");
        let c: u16 = line[..3].parse().expect("three digits");
        assert_eq!(*code.get_or_insert(c), c, "one code per reply");
        let sep = line.as_bytes()[3];
        let last = i + 1 == lines.len();
        assert_eq!(sep, if last { b' ' } else { b'-' }, "in {line:?}");
        out.push(line[4..].to_owned());
    }
    (code.expect("at least one line"), out)
}

fn reference_lines(input: &[u8], max: usize) -> Vec<Line> {
    let mut out = Vec::new();
    let mut rest = input;
    while let Some(pos) = rest.windows(2).position(|w| w == b"\r\n") {
        let (line, tail) = rest.split_at(pos + 2);
        rest = tail;
        if line.len() > max {
            out.push(Line::TooLong);
        } else {
            out.push(Line::Complete(line[..pos].to_vec()));
        }
    }
    out
}

/// RFC 3461 §4 xtext, as a client encodes it.
fn xtext(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if (0x21..=0x7e).contains(&b) && b != b'+' && b != b'=' {
                (b as char).to_string()
            } else {
                format!("+{b:02X}")
            }
        })
        .collect()
}

fn command_prefix() -> impl Strategy<Value = &'static [u8]> {
    prop::sample::select(vec![
        &b""[..],
        b"MAIL FROM:",
        b"MAIL FROM:<a@b.example> ",
        b"RCPT TO:",
        b"RCPT TO:<c@d.example> ",
        b"AUTH ",
        b"AUTH PLAIN ",
        b"EHLO ",
        b"BDAT ",
        b"ETRN ",
    ])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn command_parse_never_panics_and_never_runs_nul_or_bare_cr_or_lf(
        prefix in command_prefix(),
        tail in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut line = prefix.to_vec();
        line.extend_from_slice(&tail);
        let bad = line.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n');
        match parse(&line) {
            Ok(Command::Auth { mechanism, .. }) => {
                prop_assert!(!bad);
                prop_assert!((1..=20).contains(&mechanism.len()));
            }
            Ok(_) => prop_assert!(!bad),
            Err(ParseError::BadCharacters) => prop_assert!(bad),
            Err(_) => prop_assert!(!bad),
        }
    }

    #[test]
    fn line_framing_does_not_depend_on_tcp_segmentation(
        input in prop::collection::vec(
            prop::sample::select(vec![b'a', b' ', b'\r', b'\n', b'.', 0u8, 0xff]), 0..400),
        segment in 1usize..64,
        max in 4usize..80,
    ) {
        let mut buf = LineBuffer::default();
        let mut got = Vec::new();
        for chunk in input.chunks(segment) {
            buf.push(chunk);
            while let Some(l) = buf.next_line(max) {
                got.push(l);
            }
        }
        prop_assert_eq!(got, reference_lines(&input, max));
    }

    #[test]
    fn reply_renders_as_rfc5321_lines_that_parse_back(
        code in 200u16..600,
        status in prop::sample::select(vec!["", "2.0.0", "4.7.0", "5.5.4", "5.7.8"]),
        lines in prop::collection::vec("[ -~]{0,40}", 1..6),
    ) {
        let reply = Reply::multi(code, status, lines.iter().cloned().map(Into::into).collect());
        let (got_code, got_lines) = read_reply(&reply.to_bytes());
        prop_assert_eq!(got_code, code);
        let expected: Vec<String> = lines
            .iter()
            .map(|l| match (status, l.is_empty()) {
                ("", _) => l.clone(),
                (s, true) => s.to_owned(),
                (s, false) => format!("{s} {l}"),
            })
            .collect();
        prop_assert_eq!(got_lines, expected);
    }

    #[test]
    fn sasl_challenge_bytes_survive_the_334_base64_round_trip(
        bytes in prop::collection::vec(any::<u8>(), 0..600),
    ) {
        let (code, lines) = read_reply(&Reply::challenge(B64.encode(&bytes)).to_bytes());
        prop_assert_eq!(code, 334);
        prop_assert_eq!(lines.len(), 1);
        prop_assert_eq!(B64.decode(&lines[0]).unwrap(), bytes);
    }

    #[test]
    fn mail_auth_parameter_xtext_round_trips(identity in "[ -~]{1,60}") {
        let line = format!("MAIL FROM:<a@b.example> AUTH={}", xtext(&identity));
        let Ok(Command::Mail(m)) = parse(line.as_bytes()) else {
            return Err(TestCaseError::fail(format!("not parsed: {line}")));
        };
        prop_assert_eq!(m.auth.as_deref(), Some(identity.as_str()));
    }
}
