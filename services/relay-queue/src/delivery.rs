//! Delivery to a destination: the hop (or the MX hosts in turn, RFC 5321
//! §5.1), its AuthInfo entry and token source, the host status cache, and
//! one `relay-queue deliver` span per connection.

use authrelay_config::{AuthInfoMap, Config};
use tracing::Instrument as _;

use crate::client::{self, Hop, RcptOutcome};
use crate::error::{DeliveryError, Retry};
use crate::host_status::HostStatus;
use crate::mx::MxResolver;
use crate::oauth::TokenSources;
use crate::routing::{Destination, next_hops_without_authinfo};
use crate::spool::{Envelope, Recipient};
use crate::tls::OutboundTlsConfigs;

/// What a delivery to one hop needs, built once at start.
pub struct Delivery {
    cfg: Config,
    authinfo: AuthInfoMap,
    tokens: TokenSources,
    tls: OutboundTlsConfigs,
    pub hosts: HostStatus,
    mx: MxResolver,
}

/// One message (or its pending recipients) for one destination.
pub struct Parcel<'a> {
    pub id: &'a str,
    pub env: &'a Envelope,
    pub rcpts: &'a [&'a Recipient],
    pub body: &'a [u8],
}

impl Delivery {
    /// Loads the AuthInfo map and token sources, and warns about set-ups
    /// that would send mail somewhere unauthenticated or leak tokens.
    pub fn new(cfg: &Config) -> Result<Delivery, anyhow::Error> {
        let authinfo = cfg.authinfo().map_err(|e| e.to_config_error())?;
        let tls = OutboundTlsConfigs::new(cfg.relay_queue.tls_ca_file.as_deref())?;
        if !authinfo.is_empty() {
            tracing::info!(entries = authinfo.len(), "AuthInfo map loaded");
        }
        let tokens = TokenSources::new(cfg)?;
        for name in tokens.missing_refresh_tokens() {
            tracing::warn!(
                "token_source={name}: no refresh token stored yet; mail for its hops waits until `authrelay authinfo token set HOST` stores one"
            );
        }
        if let Some(name) = authinfo.lookup_default_token_source()
            && cfg.relay_queue.smarthost.is_empty()
        {
            // A bearer token is good at the issuer's every resource server:
            // handing it to whichever MX host offers XOAUTH2 leaks it.
            tracing::warn!(
                "the default AuthInfo entry names token source {name} and there is no smarthost: every MX host without its own entry that offers XOAUTH2/OAUTHBEARER gets its access tokens; give the hub its own entry instead"
            );
        }
        for (key, host) in next_hops_without_authinfo(cfg, &authinfo) {
            tracing::warn!(
                "{key}: next hop {host} matches no AuthInfo entry: mail to it goes out without AUTH"
            );
        }
        let dns_servers: Vec<std::net::SocketAddr> = cfg
            .relay_queue
            .dns_servers
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        let mx = MxResolver::new(&dns_servers, cfg.relay_queue.connect_timeout)?;
        Ok(Delivery {
            cfg: cfg.clone(),
            authinfo,
            tokens,
            tls,
            hosts: HostStatus::new(cfg.relay_queue.host_status_ttl),
            mx,
        })
    }

    /// Deliver to a destination; returns the relay named in the log and DSN.
    pub async fn to_destination(
        &self,
        dest: &Destination,
        parcel: &Parcel<'_>,
    ) -> (String, Result<Vec<RcptOutcome>, DeliveryError>) {
        match dest {
            Destination::Fixed(host, port) => {
                let relay = format!("{host}:{port}");
                if let Some(why) = self.hosts.down(host, *port) {
                    let err = DeliveryError::HostDown {
                        host: host.clone(),
                        port: *port,
                        why,
                    };
                    return (relay, Err(err));
                }
                (relay, self.to_host(host, *port, None, parcel).await)
            }
            Destination::Mx(domain) => self.to_mx(domain, parcel).await,
        }
    }

    /// §5.1: the MX hosts in turn, on to the next when one cannot be reached.
    async fn to_mx(
        &self,
        domain: &str,
        parcel: &Parcel<'_>,
    ) -> (String, Result<Vec<RcptOutcome>, DeliveryError>) {
        let candidates = match self.mx.candidates(domain).await {
            Ok(c) => c,
            Err(e) => {
                tracing::info!("{}: domain={domain}, {e}", parcel.id);
                return (domain.to_owned(), Err(e.into()));
            }
        };
        let port = self.cfg.relay_queue.mx_port;
        let mut tried = Vec::new();
        for c in candidates {
            let relay = format!("{}[{}]:{port}", c.host, c.addr);
            if let Some(why) = self.hosts.down(&c.host, port) {
                tried.push(format!("{relay}: host status ({why})"));
                continue;
            }
            match self.to_host(&c.host, port, Some(c.addr), parcel).await {
                Err(e) if e.hop_unreachable() => {
                    tracing::info!("{}: relay={relay}, {e}; trying the next MX host", parcel.id);
                    tried.push(format!("{relay}: {e}"));
                }
                other => return (relay, other),
            }
        }
        let err = DeliveryError::NoMxAnswered {
            domain: domain.to_owned(),
            tried,
        };
        (domain.to_owned(), Err(err))
    }

    /// One connection to one host, as one `relay-queue deliver` span in the
    /// trace of the submission that queued the message.
    async fn to_host(
        &self,
        host: &str,
        port: u16,
        addr: Option<std::net::IpAddr>,
        parcel: &Parcel<'_>,
    ) -> Result<Vec<RcptOutcome>, DeliveryError> {
        let span = tracing::info_span!(
            "deliver",
            otel.name = "relay-queue deliver",
            otel.kind = "producer",
            server.address = %host,
            server.port = port,
            network.peer.address = tracing::field::Empty,
            messaging.system = "smtp",
            messaging.operation.type = "send",
            messaging.operation.name = "deliver",
            messaging.message.id = %parcel.id,
            messaging.message.body.size = parcel.body.len(),
            messaging.batch.message_count = parcel.rcpts.len(),
            outcome = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        // Its parent is the attempt's span, in the submission's trace.
        if let Some(ip) = addr {
            span.record("network.peer.address", tracing::field::display(ip));
        }
        let authinfo = self.authinfo.lookup(host);
        let hop = Hop {
            host,
            port,
            addr,
            helo: self.cfg.helo_name(),
            timeout: self.cfg.relay_queue.connect_timeout,
            tls: self.cfg.outbound_tls(host),
            authinfo,
            tokens: authinfo
                .and_then(|a| a.token_source())
                .and_then(|name| self.tokens.get(name))
                .map(|s| &**s),
        };
        let result = client::deliver(&hop, &self.tls, parcel.env, parcel.rcpts, parcel.body)
            .instrument(span.clone())
            .await;
        match &result {
            Err(e) if e.hop_unreachable() => self.hosts.mark_down(host, port, &e.to_string()),
            Ok(_) => self.hosts.mark_up(host, port),
            Err(_) => {}
        }
        let outcome = match &result {
            Ok(o) if o.iter().all(|o| matches!(o, RcptOutcome::Delivered(_))) => "sent",
            Ok(_) => "partial",
            Err(e) if e.verdict().retry == Retry::Never => "failed",
            Err(_) => "deferred",
        };
        span.record("outcome", outcome);
        if outcome != "sent" {
            span.record("otel.status_code", "ERROR");
        }
        result
    }
}
