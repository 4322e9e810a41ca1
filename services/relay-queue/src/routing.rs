//! Where the mail for a recipient domain goes (RFC 5321 §5.1): a route
//! (mailertable), else the smarthost, else the domain's MX hosts.

use authrelay_config::{AuthInfoMap, Config, RelayQueueConfig, parse_host_port};

/// The next hop of one recipient domain.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Destination {
    /// A route (mailertable) or the smarthost.
    Fixed(String, u16),
    /// The domain's MX hosts (or its A/AAAA), on `relay_queue.mx_port`.
    Mx(String),
}

pub fn route(rq: &RelayQueueConfig, domain: &str) -> Destination {
    let d = domain.trim_end_matches('.').to_ascii_lowercase();
    rq.routes
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(&d))
        .map(|(_, v)| v.as_str())
        .or(Some(rq.smarthost.as_str()).filter(|s| !s.is_empty()))
        .and_then(|hop| parse_host_port(hop).ok())
        .map_or(Destination::Mx(d), |(h, p)| Destination::Fixed(h, p))
}

/// Configured next hops (smarthost, routes) that no AuthInfo entry covers,
/// when there is an AuthInfo map at all: the operator wrote credentials for
/// some hub, so a hop without any is most likely a typo in a host name,
/// and the relay would go out unauthenticated (and be refused) silently.
pub fn next_hops_without_authinfo(cfg: &Config, authinfo: &AuthInfoMap) -> Vec<(String, String)> {
    if authinfo.is_empty() {
        return Vec::new();
    }
    let rq = &cfg.relay_queue;
    std::iter::once(("relay_queue.smarthost".to_owned(), rq.smarthost.as_str()))
        .chain(
            rq.routes
                .iter()
                .map(|(domain, hop)| (format!("relay_queue.routes.\"{domain}\""), hop.as_str())),
        )
        .filter(|(_, hop)| !hop.is_empty())
        .filter_map(|(key, hop)| {
            let host = parse_host_port(hop).map_or(hop.to_owned(), |(h, _)| h);
            authinfo.lookup(&host).is_none().then_some((key, host))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_beats_the_smarthost_and_the_smarthost_beats_mx() {
        let mut rq = RelayQueueConfig {
            smarthost: "mailhub.example.com:587".into(),
            ..RelayQueueConfig::default()
        };
        rq.routes
            .insert("Other.Example".into(), "mx.other.example:2525".into());
        assert_eq!(
            route(&rq, "other.example."),
            Destination::Fixed("mx.other.example".into(), 2525)
        );
        assert_eq!(
            route(&rq, "elsewhere.example"),
            Destination::Fixed("mailhub.example.com".into(), 587)
        );
        rq.smarthost.clear();
        assert_eq!(
            route(&rq, "Elsewhere.Example."),
            Destination::Mx("elsewhere.example".into())
        );
    }

    #[test]
    fn a_next_hop_no_authinfo_entry_covers_is_reported() {
        let mut cfg = Config::default();
        cfg.relay_queue.smarthost = "mailhub.example.com:587".into();
        cfg.relay_queue
            .routes
            .insert("other.example".into(), "mx.other.example:25".into());
        let map = AuthInfoMap::parse(
            "AuthInfo:mailhub.example.com \"U:relay\" \"P:secret-pw\" \"M:PLAIN\"\n",
            std::path::Path::new("authinfo"),
        )
        .unwrap();
        let missing = next_hops_without_authinfo(&cfg, &map);
        assert_eq!(
            missing,
            vec![(
                "relay_queue.routes.\"other.example\"".to_owned(),
                "mx.other.example".to_owned()
            )]
        );
        // Without any AuthInfo map, relaying unauthenticated is the intent.
        let empty = AuthInfoMap::default();
        assert!(next_hops_without_authinfo(&cfg, &empty).is_empty());
    }
}
