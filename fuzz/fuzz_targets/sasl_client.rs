//! Our SASL client (relay-queue → next hop) fed arbitrary server challenges: a
//! hostile or broken next hop must not crash or hang the relay, and must never be
//! accepted as having proved knowledge of our secret.
//!
//! Input: byte 0 picks the mechanism, the rest is split on 0xFF into challenges.
#![no_main]

use authrelay_sasl::{
    ChannelBinding, ChannelBindingType, ClientCredentials, ClientExchange, Mechanism,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [m, rest @ ..] = data else {
        return;
    };
    let mechanism = Mechanism::ALL[usize::from(*m) % Mechanism::ALL.len()];
    let mut creds = ClientCredentials::new("user", "pencil");
    creds.host = "mx.example.org".into();
    creds.channel_binding = Some(ChannelBinding {
        kind: ChannelBindingType::TlsExporter,
        data: b"exporter-bytes".to_vec(),
    });
    let Ok(mut ex) = ClientExchange::new(mechanism, creds) else {
        return;
    };
    let _ = ex.initial_response();
    // Answers the server accepted. For SCRAM and DIGEST-MD5 the second one would
    // be the server's proof (v= / rspauth=), which random bytes cannot forge.
    let mut accepted = 0;
    let mut challenges = rest.split(|&b| b == 0xff);
    for _ in 0..8 {
        let Some(challenge) = challenges.next() else {
            break;
        };
        match ex.step(challenge) {
            Ok(_) => accepted += 1,
            Err(_) => break,
        }
    }
    if let Some(last) = challenges.next()
        && ex.verify_final(last).is_ok()
    {
        accepted += 1;
    }
    if !matches!(
        mechanism,
        Mechanism::Plain
            | Mechanism::Login
            | Mechanism::CramMd5
            | Mechanism::External
            | Mechanism::OAuthBearer
            | Mechanism::XOAuth2
    ) {
        assert!(
            accepted <= 1,
            "{mechanism:?} accepted a forged server proof"
        );
    }
});
