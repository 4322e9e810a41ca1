//! One command line from a client → `command::parse`. Must never panic, and what
//! it accepts must keep the shape the session relies on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use authrelay_smtp::command::{Command, ParseError, parse};

fuzz_target!(|line: &[u8]| {
    match parse(line) {
        Ok(Command::Auth { mechanism, .. }) => {
            // RFC 4422 §3.1: the name that reaches logs and sasl-auth is 1-20 of [A-Z0-9-_].
            assert!(!mechanism.is_empty() && mechanism.len() <= 20);
            assert!(
                mechanism.bytes().all(|b| b.is_ascii_uppercase()
                    || b.is_ascii_digit()
                    || b == b'-'
                    || b == b'_')
            );
        }
        Ok(_) => {
            // A NUL, bare CR or bare LF is never executed as part of a command.
            assert!(!line.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n'));
        }
        Err(ParseError::BadCharacters) => {
            assert!(line.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n'));
        }
        Err(_) => {}
    }
});
