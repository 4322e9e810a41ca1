//! `[relay_queue]`: next hops, the AuthInfo map and the token sources it
//! names, outbound TLS and DNS, and the delivery schedule.

use super::{humantime_fmt, parse_host_port};
use crate::{Config, ConfigError};

/// Takes the whole [`Config`]: the AuthInfo map is read through
/// [`Config::authinfo`] (its file, then the TOML entries).
pub(super) fn check(cfg: &Config) -> Result<(), ConfigError> {
    let rq = &cfg.relay_queue;
    if !rq.smarthost.is_empty() {
        parse_host_port(&rq.smarthost)
            .map_err(|why| ConfigError::new("relay_queue.smarthost", &rq.smarthost, why))?;
    }
    for (domain, hop) in &rq.routes {
        parse_host_port(hop)
            .map_err(|why| ConfigError::new(format!("relay_queue.routes.{domain}"), hop, why))?;
    }
    // A malformed AuthInfo line stops every start and `config check`,
    // naming the line and the field, rather than failing AUTH at 3 a.m.
    crate::token_source::validate(&rq.token_sources)?;
    cfg.authinfo()
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
        server
            .parse::<std::net::SocketAddr>()
            .map_err(|_| ConfigError::new("relay_queue.dns_servers", server, "expected ip:port"))?;
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
