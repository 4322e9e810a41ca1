//! `[frontend]`: the RFC minimums of its SMTP limits, its listeners and
//! TLS, and the networks and access rules of its relay policy.

use super::parse_network;
use crate::{ConfigError, FrontendConfig, ListenerRole};

pub(super) fn check(fe: &FrontendConfig) -> Result<(), ConfigError> {
    limits(fe)?;
    listeners(fe)?;
    if fe.tls.cert.is_some() != fe.tls.key.is_some() {
        return Err(ConfigError::new(
            "frontend.tls",
            "",
            "cert and key must be given together",
        ));
    }
    relay_policy(fe)
}

fn limits(fe: &FrontendConfig) -> Result<(), ConfigError> {
    if fe.max_line_length < 512 {
        return Err(ConfigError::new(
            "frontend.max_line_length",
            fe.max_line_length.to_string(),
            "RFC 5321 §4.5.3.1.4 requires at least 512",
        ));
    }
    if fe.max_auth_line_length < 12288 {
        return Err(ConfigError::new(
            "frontend.max_auth_line_length",
            fe.max_auth_line_length.to_string(),
            "RFC 4954 §4 requires at least 12288",
        ));
    }
    if fe.max_recipients == 0 {
        return Err(ConfigError::new(
            "frontend.max_recipients",
            "0",
            "must be at least 1 (RFC 5321 §4.5.3.1.8 asks for 100)",
        ));
    }
    if fe.max_connections == 0 {
        return Err(ConfigError::new(
            "frontend.max_connections",
            "0",
            "must be at least 1",
        ));
    }
    if fe.max_message_size == 0 {
        return Err(ConfigError::new(
            "frontend.max_message_size",
            "0",
            "must be at least 1",
        ));
    }
    Ok(())
}

fn listeners(fe: &FrontendConfig) -> Result<(), ConfigError> {
    for (i, l) in fe.listeners.iter().enumerate() {
        if l.role == ListenerRole::Submissions && fe.tls.disabled {
            return Err(ConfigError::new(
                format!("frontend.listeners[{i}].role"),
                "submissions",
                "implicit TLS needs TLS; frontend.tls.disabled is true",
            ));
        }
    }
    for (i, a) in fe.listeners.iter().map(|l| l.address).enumerate() {
        // Port 0 (tests, ephemeral) never clashes.
        if a.port() != 0 && fe.listeners.iter().skip(i + 1).any(|l| l.address == a) {
            return Err(ConfigError::new(
                format!("frontend.listeners[{i}].address"),
                a.to_string(),
                "listed twice",
            ));
        }
    }
    Ok(())
}

fn relay_policy(fe: &FrontendConfig) -> Result<(), ConfigError> {
    for (key, nets) in [
        ("frontend.trusted_networks", &fe.trusted_networks),
        ("frontend.xtrace_networks", &fe.xtrace_networks),
    ] {
        for net in nets.iter() {
            parse_network(net).map_err(|why| ConfigError::new(key, net, why))?;
        }
    }
    for (i, rule) in fe.access.iter().enumerate() {
        if rule.key.trim().is_empty() {
            return Err(ConfigError::new(
                format!("frontend.access[{i}].key"),
                "",
                "must not be empty",
            ));
        }
    }
    Ok(())
}
