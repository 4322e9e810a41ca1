//! The attribute parsers inside DIGEST-MD5 (RFC 2831 §7.1 directives) and SCRAM
//! (RFC 5802 saslname), directly: no panic, and what they parse prints back and
//! parses to the same thing.
#![no_main]

use authrelay_sasl::fuzzing::{
    digest_directives, digest_quote, scram_escape_saslname, scram_unescape_saslname,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(directives) = digest_directives(text) {
        let printed: Vec<String> = directives
            .iter()
            .map(|(n, v)| format!("{n}={}", digest_quote(v)))
            .collect();
        assert_eq!(
            digest_directives(&printed.join(",")).as_ref(),
            Ok(&directives)
        );
    }
    if let Ok(name) = scram_unescape_saslname(text) {
        assert!(!name.contains('\0'));
        assert_eq!(
            scram_unescape_saslname(&scram_escape_saslname(&name)),
            Ok(name)
        );
    }
    let escaped = scram_escape_saslname(text);
    assert!(!escaped.contains(','));
    if !text.contains('\0') {
        assert_eq!(scram_unescape_saslname(&escaped).as_deref(), Ok(text));
    }
});
