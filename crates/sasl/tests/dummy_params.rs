//! The unknown-user stand-in copies the configured costs (its own test binary: the setting
//! is once per process).

use authrelay_sasl::{SecretFamily, SecretParams, StoredSecret, dummy_secret, set_dummy_params};

#[test]
fn unknown_user_dummy_uses_the_configured_costs_so_it_cannot_be_told_apart() {
    set_dummy_params(SecretParams {
        scram_iterations: 8192,
        argon2_m_cost_kib: 8192,
        argon2_t_cost: 1,
        ..SecretParams::default()
    });
    match dummy_secret(SecretFamily::ScramSha256, "nobody") {
        // A real user's server-first says i=8192 under this config; so must a ghost's.
        StoredSecret::ScramSha256 { iterations, .. } => assert_eq!(iterations, 8192),
        other => panic!("{other:?}"),
    }
    match dummy_secret(SecretFamily::Password, "nobody") {
        StoredSecret::Password { phc } => {
            assert!(phc.starts_with("$argon2id$"), "{phc}");
            assert!(phc.contains("m=8192,t=1,"), "{phc}");
        }
        other => panic!("{other:?}"),
    }
}
