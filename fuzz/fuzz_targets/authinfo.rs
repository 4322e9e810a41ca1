//! An AuthInfo file (the seed's `AuthInfo:host "U:…" "I:…" "P:…" "R:…" "M:…"`
//! lines) → `AuthInfoMap::parse`: no panic, and an error never echoes a password.
#![no_main]

use std::path::Path;

use authrelay_config::AuthInfoMap;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match AuthInfoMap::parse(text, Path::new("authinfo")) {
        Ok(map) => {
            for entry in map.entries() {
                let _ = map.lookup(&entry.host);
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
