//! `[credential_store]`: the mechanisms new users get, the backend and its
//! sealing key, and the cost of the derived secrets. (Its `listen_unix` is
//! checked with the other internal endpoints, in `internal`.)

use authrelay_sasl::Mechanism;

use super::known_mechanisms;
use crate::{ConfigError, CredentialBackend, CredentialStoreConfig};

pub(super) fn check(cs: &CredentialStoreConfig) -> Result<(), ConfigError> {
    for m in cs.default_mechanisms.iter() {
        match Mechanism::from_name(m) {
            Some(mech) if mech.family().is_some() => {}
            Some(_) => {
                return Err(ConfigError::new(
                    "credential_store.default_mechanisms",
                    m,
                    "needs no stored secret; list password mechanisms only",
                ));
            }
            None => {
                return Err(ConfigError::new(
                    "credential_store.default_mechanisms",
                    m,
                    format!("unknown SASL mechanism; known: {}", known_mechanisms()),
                ));
            }
        }
    }
    if cs.backend == CredentialBackend::Postgres && cs.database_url.is_empty() {
        return Err(ConfigError::new(
            "credential_store.database_url",
            "",
            "is required when credential_store.backend = \"postgres\"",
        ));
    }
    // The file backend seals with a key it generates beside the
    // database; a shared database server gets no such local key (a
    // pod's disk goes with the pod): the operator provides one.
    if cs.backend == CredentialBackend::Postgres && cs.encryption_key_file.is_none() {
        return Err(ConfigError::new(
            "credential_store.encryption_key_file",
            "",
            "is required when credential_store.backend = \"postgres\": secrets in a shared \
             database are sealed with a key you provide (32 random bytes as hex or base64, \
             e.g. `head -c32 /dev/urandom | base64`), never one generated on a pod's local disk",
        ));
    }
    if !(1..=10_000_000).contains(&cs.scram_iterations) || cs.scram_iterations < 4096 {
        return Err(ConfigError::new(
            "credential_store.scram_iterations",
            cs.scram_iterations.to_string(),
            "must be at least 4096 (RFC 7677 §4)",
        ));
    }
    if cs.argon2_memory_kib < 8 * 1024 {
        return Err(ConfigError::new(
            "credential_store.argon2_memory_kib",
            cs.argon2_memory_kib.to_string(),
            "must be at least 8192 KiB",
        ));
    }
    if cs.argon2_iterations == 0 {
        return Err(ConfigError::new(
            "credential_store.argon2_iterations",
            "0",
            "must be at least 1",
        ));
    }
    Ok(())
}
