use std::fmt;

use authrelay_sasl::Mechanism;

use crate::Config;

mod credential_store;
mod frontend;
mod internal;
mod limits;
mod relay_queue;
mod sasl;

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
    ///
    /// One check per section, in this order; the first mistake found is
    /// the one reported.
    pub fn validate(&self) -> Result<(), ConfigError> {
        identity(self)?;
        sasl::check(&self.sasl)?;
        limits::check(&self.limits)?;
        credential_store::check(&self.credential_store)?;
        redis(self)?;
        internal::check(self)?;
        frontend::check(&self.frontend)?;
        relay_queue::check(self)
    }
}

/// `hostname` and `default_realm`, the top-level keys.
fn identity(cfg: &Config) -> Result<(), ConfigError> {
    if cfg.hostname.trim().is_empty() || cfg.hostname.contains(char::is_whitespace) {
        return Err(ConfigError::new(
            "hostname",
            &cfg.hostname,
            "must be a host name without spaces",
        ));
    }
    if cfg.default_realm.is_empty() {
        return Err(ConfigError::new("default_realm", "", "must not be empty"));
    }
    Ok(())
}

/// `[redis]`: credentials kept out of the URL (`RedisConfig::validate`),
/// and a URL the redis crate can dial, or none (the in-process store).
fn redis(cfg: &Config) -> Result<(), ConfigError> {
    cfg.redis.validate()?;
    let redis_schemes = ["redis://", "rediss://", "redis+unix://", "unix://"];
    if !cfg.redis.url.is_empty() && !redis_schemes.iter().any(|s| cfg.redis.url.starts_with(s)) {
        return Err(ConfigError::new(
            "redis.url",
            &cfg.redis.url,
            "must start with redis://, rediss:// or unix://",
        ));
    }
    Ok(())
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
