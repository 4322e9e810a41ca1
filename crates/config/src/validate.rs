use std::fmt;

use authrelay_sasl::Mechanism;

use crate::{Config, CredentialBackend, ListenerRole, PerUserLimits};

/// A refused configuration: which key, which value, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub key: String,
    pub value: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value.is_empty() {
            write!(f, "configuration key `{}`: {}", self.key, self.reason)
        } else {
            write!(
                f,
                "configuration key `{}` = {:?}: {}",
                self.key, self.value, self.reason
            )
        }
    }
}

impl ConfigError {
    pub fn new(
        key: impl Into<String>,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        ConfigError {
            key: key.into(),
            value: value.into(),
            reason: reason.into(),
        }
    }

    /// The config crate reports type errors as text naming the key
    /// ("invalid type: … for key `frontend.max_recipients`"): keep its words
    /// and lift the key out so the message leads with it.
    pub(crate) fn from_deserialize(err: config::ConfigError) -> Self {
        let text = err.to_string();
        let key = text
            .split("for key `")
            .nth(1)
            .and_then(|rest| rest.split('`').next())
            .or_else(|| {
                text.split("unknown field `")
                    .nth(1)
                    .and_then(|rest| rest.split('`').next())
            })
            .unwrap_or("(file)")
            .to_owned();
        ConfigError::new(key, "", text)
    }
}

impl Config {
    /// Checks everything that types alone do not. Runs before any service
    /// starts, so a bad configuration is never half-applied.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.hostname.trim().is_empty() || self.hostname.contains(char::is_whitespace) {
            return Err(ConfigError::new(
                "hostname",
                &self.hostname,
                "must be a host name without spaces",
            ));
        }
        if self.default_realm.is_empty() {
            return Err(ConfigError::new("default_realm", "", "must not be empty"));
        }
        for (key, list) in [
            ("sasl.mechanisms", &self.sasl.mechanisms),
            ("sasl.trusted", &self.sasl.trusted),
        ] {
            for m in list.iter() {
                if Mechanism::from_name(m).is_none() {
                    return Err(ConfigError::new(
                        key,
                        m,
                        format!("unknown SASL mechanism; known: {}", known_mechanisms()),
                    ));
                }
            }
        }
        self.sasl.oauth.validate()?;
        for m in self.sasl.mechanisms.iter() {
            if Mechanism::from_name(m).is_some_and(Mechanism::uses_bearer_token)
                && self.sasl.oauth.issuers.is_empty()
            {
                return Err(ConfigError::new(
                    "sasl.mechanisms",
                    m,
                    "needs a token issuer: add a [[sasl.oauth.issuers]] entry (issuer, audience, user_claim)",
                ));
            }
        }
        for m in self.sasl.trusted.iter() {
            if !self.sasl.mechanisms.contains_ignore_case(m) {
                return Err(ConfigError::new(
                    "sasl.trusted",
                    m,
                    "is not in sasl.mechanisms (a mechanism must be offered to be trusted)",
                ));
            }
        }
        for m in self.credential_store.default_mechanisms.iter() {
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
        if self.sasl.exchange_ttl.as_secs() == 0 {
            return Err(ConfigError::new(
                "sasl.exchange_ttl",
                "0s",
                "must be at least one second",
            ));
        }
        let lim = &self.sasl.limits;
        if (lim.max_failures_per_ip > 0 || lim.max_failures_per_user > 0)
            && lim.window.as_secs() == 0
        {
            return Err(ConfigError::new(
                "sasl.limits.window",
                "0s",
                "must be at least one second when a limit is set",
            ));
        }
        let per_user = &self.limits.per_user;
        if per_user.enabled && per_user.suspend_factor == 1 {
            return Err(ConfigError::new(
                "limits.per_user.suspend_factor",
                "1",
                "would suspend an account at its first refused message; use 2 or more (or 0 for never)",
            ));
        }
        if per_user.suspend_factor > 1000 {
            return Err(ConfigError::new(
                "limits.per_user.suspend_factor",
                per_user.suspend_factor.to_string(),
                "must be at most 1000 (0 = never suspend)",
            ));
        }
        for name in PerUserLimits::NAMES {
            let v = per_user.get(name).unwrap_or(0);
            if v > 1_000_000_000 {
                return Err(ConfigError::new(
                    format!("limits.per_user.{name}"),
                    v.to_string(),
                    "must be at most 1000000000 (0 = no limit)",
                ));
            }
        }
        self.redis.validate()?;
        let redis_schemes = ["redis://", "rediss://", "redis+unix://", "unix://"];
        if !self.redis.url.is_empty()
            && !redis_schemes.iter().any(|s| self.redis.url.starts_with(s))
        {
            return Err(ConfigError::new(
                "redis.url",
                &self.redis.url,
                "must start with redis://, rediss:// or unix://",
            ));
        }
        for (key, list) in [
            ("endpoints.sasl_auth", &self.endpoints.sasl_auth),
            (
                "endpoints.credential_store",
                &self.endpoints.credential_store,
            ),
            ("endpoints.relay_queue", &self.endpoints.relay_queue),
            ("endpoints.frontend", &self.endpoints.frontend),
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
                    } else if self.internal_tls.enabled {
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
                if self.internal_tls.enabled && !url.starts_with("https://") {
                    return Err(ConfigError::new(
                        key,
                        url,
                        "must be an https:// URL when internal_tls.enabled is true",
                    ));
                }
                if !self.internal_tls.enabled && url.starts_with("https://") {
                    return Err(ConfigError::new(
                        key,
                        url,
                        "https:// needs internal_tls.enabled = true (and its cert, key and ca)",
                    ));
                }
            }
        }
        for (key, path) in [
            ("sasl_auth.listen_unix", &self.sasl_auth.listen_unix),
            (
                "credential_store.listen_unix",
                &self.credential_store.listen_unix,
            ),
            ("relay_queue.listen_unix", &self.relay_queue.listen_unix),
        ] {
            let Some(path) = path else { continue };
            let shown = path.display().to_string();
            if !path.is_absolute() {
                return Err(ConfigError::new(key, &shown, "must be an absolute path"));
            }
            if self.internal_tls.enabled {
                return Err(ConfigError::new(
                    key,
                    &shown,
                    "the Unix socket is plain HTTP/2; with internal_tls.enabled every connection must be mutual TLS — leave it unset",
                ));
            }
        }
        if self.internal_tls.enabled {
            let t = &self.internal_tls;
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
        }
        let fe = &self.frontend;
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
        if fe.tls.cert.is_some() != fe.tls.key.is_some() {
            return Err(ConfigError::new(
                "frontend.tls",
                "",
                "cert and key must be given together",
            ));
        }
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
        let cs = &self.credential_store;
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
        let rq = &self.relay_queue;
        if !rq.smarthost.is_empty() {
            parse_host_port(&rq.smarthost)
                .map_err(|why| ConfigError::new("relay_queue.smarthost", &rq.smarthost, why))?;
        }
        for (domain, hop) in &rq.routes {
            parse_host_port(hop).map_err(|why| {
                ConfigError::new(format!("relay_queue.routes.{domain}"), hop, why)
            })?;
        }
        // A malformed AuthInfo line stops every start and `config check`,
        // naming the line and the field, rather than failing AUTH at 3 a.m.
        crate::token_source::validate(&rq.token_sources)?;
        self.authinfo()
            .map_err(|e| e.to_config_error())?
            .check_token_sources(&rq.token_sources)?;
        if let Some(ca) = &rq.tls_ca_file
            && !ca.is_file()
        {
            return Err(ConfigError::new(
                "relay_queue.tls_ca_file",
                ca.display().to_string(),
                "no such file",
            ));
        }
        for server in rq.dns_servers.iter() {
            server.parse::<std::net::SocketAddr>().map_err(|_| {
                ConfigError::new("relay_queue.dns_servers", server, "expected ip:port")
            })?;
        }
        if rq.mx_port == 0 {
            return Err(ConfigError::new(
                "relay_queue.mx_port",
                "0",
                "must be a port",
            ));
        }
        if rq.max_deliveries == 0 {
            return Err(ConfigError::new(
                "relay_queue.max_deliveries",
                "0",
                "must be at least 1",
            ));
        }
        if rq.retry_initial.is_zero() || rq.retry_max < rq.retry_initial {
            return Err(ConfigError::new(
                "relay_queue.retry_max",
                humantime_fmt(rq.retry_max),
                "must be at least relay_queue.retry_initial, which must be above zero",
            ));
        }
        Ok(())
    }
}

fn humantime_fmt(d: std::time::Duration) -> String {
    format!("{}s", d.as_secs())
}

fn known_mechanisms() -> String {
    Mechanism::ALL
        .iter()
        .map(|m| m.name())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A CIDR network or a single address.
pub fn parse_network(s: &str) -> Result<ipnet::IpNet, String> {
    if let Ok(net) = s.parse::<ipnet::IpNet>() {
        return Ok(net);
    }
    s.parse::<std::net::IpAddr>()
        .map(ipnet::IpNet::from)
        .map_err(|_| "not an IP network (use CIDR like 192.0.2.0/24 or an address)".to_owned())
}

/// `host:port` or `[v6]:port`; the port is required.
pub fn parse_host_port(s: &str) -> Result<(String, u16), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| "must be host:port".to_owned())?;
    let port: u16 = port
        .parse()
        .map_err(|_| "port must be a number 1-65535".to_owned())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port == 0 {
        return Err("must be host:port".into());
    }
    Ok((host.to_owned(), port))
}
