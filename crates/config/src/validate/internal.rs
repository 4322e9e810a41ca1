//! How the services reach each other: `[endpoints]`, the `listen_unix`
//! sockets of sasl-auth, credential-store and relay-queue, and
//! `[internal_tls]`. Checked together because each depends on whether
//! mutual TLS is on: every hop is then `https://`, and no plain Unix socket
//! may bypass it.

use crate::{Config, ConfigError};

pub(super) fn check(cfg: &Config) -> Result<(), ConfigError> {
    endpoints(cfg)?;
    unix_listeners(cfg)?;
    internal_tls(cfg)
}

fn endpoints(cfg: &Config) -> Result<(), ConfigError> {
    for (key, list) in [
        ("endpoints.sasl_auth", &cfg.endpoints.sasl_auth),
        (
            "endpoints.credential_store",
            &cfg.endpoints.credential_store,
        ),
        ("endpoints.relay_queue", &cfg.endpoints.relay_queue),
        ("endpoints.frontend", &cfg.endpoints.frontend),
    ] {
        if list.is_empty() {
            return Err(ConfigError::new(
                key,
                "",
                "needs at least one http:// or https:// URL",
            ));
        }
        for url in list.iter() {
            if let Some(path) = url.strip_prefix("unix:") {
                // A co-located peer's socket: nothing to balance, plain.
                let path = path.strip_prefix("//").unwrap_or(path);
                let why = if list.len() > 1 {
                    Some("a unix: endpoint must be the only one for its service")
                } else if !std::path::Path::new(path).is_absolute() {
                    Some(
                        "a unix: endpoint needs an absolute path, e.g. unix:/run/authrelay/sasl-auth.sock",
                    )
                } else if cfg.internal_tls.enabled {
                    Some(
                        "unix: endpoints are plain; with internal_tls.enabled every hop is mutual TLS — use https://",
                    )
                } else {
                    None
                };
                if let Some(why) = why {
                    return Err(ConfigError::new(key, url, why));
                }
                continue;
            }
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::new(
                    key,
                    url,
                    "must be an http://, https:// or unix:/path URL",
                ));
            }
            // With mutual TLS on, every server demands a client
            // certificate: a plain http:// peer could never answer.
            if cfg.internal_tls.enabled && !url.starts_with("https://") {
                return Err(ConfigError::new(
                    key,
                    url,
                    "must be an https:// URL when internal_tls.enabled is true",
                ));
            }
            if !cfg.internal_tls.enabled && url.starts_with("https://") {
                return Err(ConfigError::new(
                    key,
                    url,
                    "https:// needs internal_tls.enabled = true (and its cert, key and ca)",
                ));
            }
        }
    }
    Ok(())
}

fn unix_listeners(cfg: &Config) -> Result<(), ConfigError> {
    for (key, path) in [
        ("sasl_auth.listen_unix", &cfg.sasl_auth.listen_unix),
        (
            "credential_store.listen_unix",
            &cfg.credential_store.listen_unix,
        ),
        ("relay_queue.listen_unix", &cfg.relay_queue.listen_unix),
    ] {
        let Some(path) = path else { continue };
        let shown = path.display().to_string();
        if !path.is_absolute() {
            return Err(ConfigError::new(key, &shown, "must be an absolute path"));
        }
        if cfg.internal_tls.enabled {
            return Err(ConfigError::new(
                key,
                &shown,
                "the Unix socket is plain HTTP/2; with internal_tls.enabled every connection must be mutual TLS — leave it unset",
            ));
        }
    }
    Ok(())
}

fn internal_tls(cfg: &Config) -> Result<(), ConfigError> {
    let t = &cfg.internal_tls;
    if !t.enabled {
        return Ok(());
    }
    for (key, path) in [
        ("internal_tls.cert", &t.cert),
        ("internal_tls.key", &t.key),
        ("internal_tls.ca", &t.ca),
    ] {
        match path {
            None => {
                return Err(ConfigError::new(
                    key,
                    "",
                    "is required when internal_tls.enabled is true",
                ));
            }
            Some(p) if !p.is_file() => {
                return Err(ConfigError::new(
                    key,
                    p.display().to_string(),
                    "no such file",
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}
