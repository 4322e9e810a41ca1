//! The relay policy: who may send where. As sendmail's `relay_entire_domain`,
//! access map and `TRUST_AUTH_MECH`: local domains and relay domains take
//! mail from anyone; everything else needs a trusted network, an access-map
//! RELAY, or an authenticated session whose mechanism is trusted.

use std::net::IpAddr;

use authrelay_config::{AccessAction, Config, parse_network};
use ipnet::IpNet;

pub use authrelay_smtp::Client;
use authrelay_smtp::Reply;

#[derive(Clone, Debug)]
enum AccessKey {
    Network(IpNet),
    Address(String),
    Domain(String),
}

#[derive(Clone, Debug)]
struct AccessEntry {
    key: AccessKey,
    action: AccessAction,
    message: Option<String>,
}

#[derive(Clone, Debug)]
pub struct RelayPolicy {
    hostname: String,
    local_domains: Vec<String>,
    relay_domains: Vec<String>,
    trusted_networks: Vec<IpNet>,
    xtrace_networks: Vec<IpNet>,
    access: Vec<AccessEntry>,
}

fn normalize_domain(d: &str) -> String {
    d.trim_end_matches('.').to_ascii_lowercase()
}

/// `local@domain` split at the last `@`, domain normalised.
fn split_address(addr: &str) -> Option<(&str, String)> {
    let (local, domain) = addr.rsplit_once('@')?;
    if local.is_empty() || domain.is_empty() {
        return None;
    }
    Some((local, normalize_domain(domain)))
}

impl RelayPolicy {
    pub fn from_config(cfg: &Config) -> Self {
        let access = cfg
            .frontend
            .access
            .iter()
            .map(|rule| {
                let key = if let Ok(net) = parse_network(&rule.key) {
                    AccessKey::Network(net)
                } else if rule.key.contains('@') {
                    AccessKey::Address(rule.key.to_ascii_lowercase())
                } else {
                    AccessKey::Domain(normalize_domain(&rule.key))
                };
                AccessEntry {
                    key,
                    action: rule.action,
                    message: rule.message.clone(),
                }
            })
            .collect();
        RelayPolicy {
            hostname: normalize_domain(&cfg.hostname),
            local_domains: cfg
                .frontend
                .local_domains
                .iter()
                .map(normalize_domain)
                .collect(),
            relay_domains: cfg
                .frontend
                .relay_domains
                .iter()
                .map(normalize_domain)
                .collect(),
            // Validated at load: every entry parses.
            trusted_networks: cfg
                .frontend
                .trusted_networks
                .iter()
                .filter_map(|n| parse_network(n).ok())
                .collect(),
            xtrace_networks: cfg
                .frontend
                .xtrace_networks
                .iter()
                .filter_map(|n| parse_network(n).ok())
                .collect(),
            access,
        }
    }

    /// May this client continue its trace here (`XTRACE`)? (`ip` is
    /// canonical: the accept loop turns ::ffff:a.b.c.d into a.b.c.d.)
    pub fn may_xtrace(&self, ip: IpAddr) -> bool {
        self.xtrace_networks.iter().any(|n| n.contains(&ip))
    }

    pub fn is_local(&self, domain: &str) -> bool {
        let d = normalize_domain(domain);
        d == self.hostname || self.local_domains.contains(&d)
    }

    fn is_relay_domain(&self, domain: &str) -> bool {
        let d = normalize_domain(domain);
        // relay_entire_domain: the domain and its subdomains.
        self.relay_domains
            .iter()
            .any(|r| d == *r || d.strip_suffix(r.as_str()).is_some_and(|p| p.ends_with('.')))
    }

    fn lookup_ip(&self, ip: IpAddr) -> Option<&AccessEntry> {
        self.access
            .iter()
            .find(|e| matches!(&e.key, AccessKey::Network(n) if n.contains(&ip)))
    }

    fn lookup_address(&self, addr: &str) -> Option<&AccessEntry> {
        let addr_l = addr.to_ascii_lowercase();
        let domain = split_address(addr).map(|(_, d)| d);
        self.access
            .iter()
            .find(|e| matches!(&e.key, AccessKey::Address(a) if *a == addr_l))
            .or_else(|| {
                let d = domain?;
                self.access.iter().find(|e| match &e.key {
                    AccessKey::Domain(k) => {
                        d == *k || d.strip_suffix(k.as_str()).is_some_and(|p| p.ends_with('.'))
                    }
                    _ => false,
                })
            })
    }

    fn reject(entry: &AccessEntry) -> Reply {
        Reply::new(
            550,
            "5.7.1",
            entry
                .message
                .clone()
                .unwrap_or_else(|| "Access denied".into()),
        )
    }

    /// At connect: an access-map REJECT for the client's network.
    pub fn check_connect(&self, ip: IpAddr) -> Result<(), Reply> {
        match self.lookup_ip(ip) {
            Some(e) if e.action == AccessAction::Reject => Err(Self::reject(e)),
            _ => Ok(()),
        }
    }

    /// MAIL FROM: an access-map REJECT for the sender. A sender never grants
    /// relaying (a forged local sender must not open the relay).
    pub fn check_sender(&self, from: &str) -> Result<(), Reply> {
        match self.lookup_address(from) {
            Some(e) if e.action == AccessAction::Reject => Err(Self::reject(e)),
            _ => Ok(()),
        }
    }

    /// RCPT TO: may this client send to this recipient?
    pub fn check_recipient(&self, rcpt: &str, client: Client) -> Result<(), Reply> {
        if let Some(e) = self.lookup_address(rcpt)
            && e.action == AccessAction::Reject
        {
            return Err(Self::reject(e));
        }
        if client.trusted_auth || self.trusted_networks.iter().any(|n| n.contains(&client.ip)) {
            return Ok(());
        }
        if let Some(e) = self.lookup_ip(client.ip)
            && matches!(e.action, AccessAction::Relay | AccessAction::Ok)
        {
            return Ok(());
        }
        if rcpt.eq_ignore_ascii_case("postmaster") {
            // RFC 5321 §4.5.1: Postmaster without a domain is always accepted.
            return Ok(());
        }
        let Some((local, domain)) = split_address(rcpt) else {
            return Err(Reply::relaying_denied());
        };
        // Routing characters inside the local part address someone beyond
        // this host (`user%outside@local`, `outside!user@local`,
        // `"user@outside"@local`, `@a:user@b`): that is relaying, whatever
        // the domain says.
        let routes_onward = local.contains(['%', '!', '@', ':']) || local.starts_with('"');
        let domain_ok = !domain.starts_with('[')
            && (self.is_local(&domain)
                || self.is_relay_domain(&domain)
                || self
                    .lookup_address(rcpt)
                    .is_some_and(|e| matches!(e.action, AccessAction::Relay | AccessAction::Ok)));
        if domain_ok && !routes_onward {
            Ok(())
        } else {
            Err(Reply::relaying_denied())
        }
    }
}

/// The SMTP session asks the relay policy through this.
impl authrelay_smtp::Policy for RelayPolicy {
    fn check_connect(&self, ip: IpAddr) -> Result<(), Reply> {
        RelayPolicy::check_connect(self, ip)
    }

    fn check_sender(&self, address: &str) -> Result<(), Reply> {
        RelayPolicy::check_sender(self, address)
    }

    fn check_recipient(&self, address: &str, client: Client) -> Result<(), Reply> {
        let verdict = RelayPolicy::check_recipient(self, address, client);
        if let Err(reply) = &verdict {
            tracing::info!(rcpt = %address, code = reply.code, "recipient refused");
        }
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RelayPolicy {
        let mut cfg = Config {
            hostname: "mail.local.example".into(),
            ..Config::default()
        };
        cfg.frontend.local_domains = authrelay_config::WordList::from(["local.example"]);
        cfg.frontend.relay_domains = authrelay_config::WordList::from(["partner.example"]);
        cfg.frontend.trusted_networks = authrelay_config::WordList::from(["10.1.0.0/16"]);
        cfg.frontend.access = vec![authrelay_config::AccessRule {
            key: "spammer.example".into(),
            action: AccessAction::Reject,
            message: Some("go away".into()),
        }];
        RelayPolicy::from_config(&cfg)
    }

    #[test]
    fn xtrace_is_for_loopback_by_default_listed_networks_when_set_and_nobody_when_empty() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let default = policy();
        assert!(default.may_xtrace(ip("127.0.0.1")));
        assert!(default.may_xtrace(ip("::1")));
        assert!(!default.may_xtrace(ip("192.0.2.7")));
        let mut cfg = Config::default();
        cfg.frontend.xtrace_networks = authrelay_config::WordList::from(["10.1.0.0/16"]);
        let listed = RelayPolicy::from_config(&cfg);
        assert!(listed.may_xtrace(ip("10.1.2.3")));
        assert!(!listed.may_xtrace(ip("127.0.0.1")));
        cfg.frontend.xtrace_networks = authrelay_config::WordList::default();
        assert!(!RelayPolicy::from_config(&cfg).may_xtrace(ip("127.0.0.1")));
    }

    fn anon() -> Client {
        Client {
            ip: "192.0.2.7".parse().unwrap(),
            trusted_auth: false,
        }
    }

    #[test]
    fn rcpt_to_outside_without_auth_is_relaying_denied() {
        let e = policy()
            .check_recipient("someone@outside.example", anon())
            .unwrap_err();
        assert_eq!((e.code, e.status), (550, "5.7.1"));
    }

    #[test]
    fn rcpt_to_outside_with_trusted_auth_is_accepted() {
        let c = Client {
            trusted_auth: true,
            ..anon()
        };
        assert!(
            policy()
                .check_recipient("someone@outside.example", c)
                .is_ok()
        );
    }

    #[test]
    fn local_and_relay_domains_take_mail_from_anyone() {
        let p = policy();
        assert!(p.check_recipient("user@local.example", anon()).is_ok());
        assert!(p.check_recipient("user@LOCAL.example.", anon()).is_ok());
        assert!(p.check_recipient("user@mail.local.example", anon()).is_ok());
        assert!(p.check_recipient("user@partner.example", anon()).is_ok());
        assert!(
            p.check_recipient("user@sub.partner.example", anon())
                .is_ok()
        );
        assert!(p.check_recipient("postmaster", anon()).is_ok());
    }

    #[test]
    fn open_relay_battery_is_refused() {
        let p = policy();
        for rcpt in [
            "user%outside.example@local.example",
            "outside.example!user@local.example",
            "\"user@outside.example\"@local.example",
            "@local.example:user@outside.example",
            "user@[192.0.2.1]",
            "user@outside.example.",
            "user@OUTSIDE.example",
            "user@notlocal.example",
            "user@local.example.outside.example",
            "nodomain",
        ] {
            assert!(
                p.check_recipient(rcpt, anon()).is_err(),
                "{rcpt} must be refused"
            );
        }
    }

    #[test]
    fn trusted_network_may_relay() {
        let c = Client {
            ip: "10.1.2.3".parse().unwrap(),
            trusted_auth: false,
        };
        assert!(policy().check_recipient("x@outside.example", c).is_ok());
    }

    #[test]
    fn access_map_reject_names_its_message() {
        let e = policy().check_sender("a@spammer.example").unwrap_err();
        assert_eq!(e.lines[0], "go away");
        assert!(policy().check_sender("a@fine.example").is_ok());
    }
}
