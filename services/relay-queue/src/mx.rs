//! MX routing for domains without a route or smarthost (RFC 5321 §5.1):
//! the MX hosts in preference order (ties shuffled), each host's A/AAAA
//! addresses; no MX at all means the domain's own A/AAAA ("implicit MX");
//! a null MX (RFC 7505, `0 .`) means the domain accepts no mail.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RData;
use rand::seq::SliceRandom;

/// One host to try, in order: the name (for TLS and AuthInfo) and an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub host: String,
    pub addr: IpAddr,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    /// RFC 7505 §4.1: the domain publishes `MX 0 .`; its mail bounces at once.
    #[error("556 5.1.10 {0} does not accept mail (null MX)")]
    NullMx(String),
    /// NXDOMAIN, or neither MX nor A/AAAA: no such destination (RFC 3463 5.1.2).
    #[error("550 5.1.2 {0}")]
    NoSuchDomain(String),
    /// SERVFAIL, timeouts, unreachable name servers: try again later.
    #[error("451 4.4.3 DNS lookup for {0} failed temporarily: {1}")]
    Temporary(String, String),
}

pub struct MxResolver {
    resolver: TokioResolver,
}

/// What a failed lookup means for the mail: "no such name/records" is an
/// answer, anything else (SERVFAIL, timeout, I/O) is a temporary failure.
enum Lookup<T> {
    Found(T),
    NoRecords { nxdomain: bool },
    Failed(String),
}

fn classify<T>(result: Result<T, NetError>) -> Lookup<T> {
    match result {
        Ok(v) => Lookup::Found(v),
        Err(NetError::Dns(DnsError::NoRecordsFound(nr))) => Lookup::NoRecords {
            nxdomain: nr.response_code == ResponseCode::NXDomain,
        },
        Err(e) => Lookup::Failed(e.to_string()),
    }
}

impl MxResolver {
    /// `servers` empty: the system's resolv.conf.
    pub fn new(servers: &[SocketAddr], timeout: Duration) -> Result<Self, anyhow::Error> {
        let mut builder = if servers.is_empty() {
            // A host without resolv.conf still relays by routes and smarthost;
            // MX lookups then fail (temporarily) until it has one.
            TokioResolver::builder_tokio().unwrap_or_else(|e| {
                tracing::warn!("no system DNS configuration ({e}); MX routing unavailable");
                TokioResolver::builder_with_config(
                    ResolverConfig::from_parts(None, Vec::new(), Vec::new()),
                    TokioRuntimeProvider::default(),
                )
            })
        } else {
            let name_servers = servers
                .iter()
                .map(|s| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = s.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = s.port();
                    NameServerConfig::new(s.ip(), true, vec![udp, tcp])
                })
                .collect();
            let config = ResolverConfig::from_parts(None, Vec::new(), name_servers);
            TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
        };
        let opts: &mut ResolverOpts = builder.options_mut();
        opts.timeout = timeout.min(Duration::from_secs(10));
        opts.attempts = 2;
        // Mail domains are absolute; a search list would turn a typo into
        // someone else's domain.
        opts.ndots = 0;
        Ok(MxResolver {
            resolver: builder.build()?,
        })
    }

    /// The hosts to try for `domain`, best first.
    pub async fn candidates(&self, domain: &str) -> Result<Vec<Candidate>, RouteError> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let fqdn = format!("{domain}.");
        let temporary = |why: String| RouteError::Temporary(domain.clone(), why);
        let mut exchanges: Vec<(u16, String)> =
            match classify(self.resolver.mx_lookup(fqdn.as_str()).await) {
                Lookup::Found(lookup) => {
                    let mut mx = Vec::new();
                    for r in lookup.answers() {
                        if let RData::MX(m) = &r.data {
                            if m.exchange.is_root() {
                                return Err(RouteError::NullMx(domain));
                            }
                            mx.push((m.preference, m.exchange.to_ascii()));
                        }
                    }
                    mx
                }
                Lookup::NoRecords { nxdomain: true } => {
                    return Err(RouteError::NoSuchDomain(format!(
                        "{domain}: no such domain (NXDOMAIN)"
                    )));
                }
                Lookup::NoRecords { nxdomain: false } => Vec::new(),
                Lookup::Failed(why) => return Err(temporary(why)),
            };
        // §5.1: no MX → the domain itself, as an implicit MX of preference 0.
        let implicit = exchanges.is_empty();
        if implicit {
            exchanges.push((0, fqdn.clone()));
        }
        // §5.1: randomise equal preferences to spread the load, then sort.
        exchanges.shuffle(&mut rand::thread_rng());
        exchanges.sort_by_key(|(pref, _)| *pref);
        let mut out = Vec::new();
        let mut failures = Vec::new();
        for (_, host) in exchanges {
            match classify(self.resolver.lookup_ip(host.as_str()).await) {
                Lookup::Found(ips) => {
                    let name = host.trim_end_matches('.').to_owned();
                    out.extend(ips.iter().map(|addr| Candidate {
                        host: name.clone(),
                        addr,
                    }));
                }
                Lookup::NoRecords { .. } => {}
                Lookup::Failed(why) => failures.push(format!("{host}: {why}")),
            }
        }
        if !out.is_empty() {
            return Ok(out);
        }
        if !failures.is_empty() {
            return Err(temporary(failures.join("; ")));
        }
        Err(RouteError::NoSuchDomain(if implicit {
            format!("{domain}: no MX and no A/AAAA record")
        } else {
            format!("{domain}: no address for any MX host")
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_name_servers_mx_lookups_fail_temporarily_not_permanently() {
        let builder = TokioResolver::builder_with_config(
            ResolverConfig::from_parts(None, Vec::new(), Vec::new()),
            TokioRuntimeProvider::default(),
        );
        let mx = MxResolver {
            resolver: builder.build().expect("a resolver with no servers builds"),
        };
        let err = mx.candidates("example.com").await.unwrap_err();
        assert!(matches!(err, RouteError::Temporary(..)), "{err}");
    }
}
