//! Who may log in as whom: realms and proxy rights.

use authrelay_config::Config;

/// A login `NAME@REALM` → (name, realm), split at the last `@` (the seed's
/// `test@mailserver.foo.com`); a bare `NAME` is in the default realm. A realm
/// the mechanism carries itself (DIGEST-MD5's `realm=`) wins.
pub fn split_login(
    login: &str,
    explicit_realm: Option<&str>,
    default_realm: &str,
) -> (String, String) {
    if let Some(realm) = explicit_realm.filter(|r| !r.is_empty()) {
        return (login.to_owned(), realm.to_owned());
    }
    match login.rsplit_once('@') {
        Some((name, realm)) if !name.is_empty() && !realm.is_empty() => {
            (name.to_owned(), realm.to_owned())
        }
        _ => (login.to_owned(), default_realm.to_owned()),
    }
}

/// The IP of "ip:port" (or "[v6]:port"), for per-address counters.
pub fn client_ip(addr: &str) -> String {
    match addr.parse::<std::net::SocketAddr>() {
        Ok(sa) => sa.ip().to_string(),
        Err(_) => addr.to_owned(),
    }
}

/// RFC 4616 §2 / RFC 4422 §3.4.1: an authzid different from the authcid is
/// allowed only with proxy rights (`sasl.proxy`). Returns the effective authzid.
pub fn authorize(
    cfg: &Config,
    authcid: &str,
    authzid: Option<&str>,
    raw_authcid: &str,
) -> Result<String, ()> {
    let Some(z) = authzid.filter(|z| !z.is_empty()) else {
        return Ok(authcid.to_owned());
    };
    if z == authcid || z == raw_authcid {
        return Ok(authcid.to_owned());
    }
    match cfg.sasl.proxy.get(authcid) {
        Some(allowed)
            if allowed
                .iter()
                .any(|a| a == "*" || a.eq_ignore_ascii_case(z)) =>
        {
            Ok(z.to_owned())
        }
        _ => Err(()),
    }
}

/// A short stable hash of a login for keys and for the log lines of
/// unknown users; a process-wide constant salt keeps it the same on every
/// replica (so counters are shared) without being a plain SHA of the name.
pub fn login_hash(name: &str, realm: &str) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(b"authrelay login v1\0");
    h.update(realm.as_bytes());
    h.update(b"\0");
    h.update(name.as_bytes());
    hex::encode(&h.finalize()[..12])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_splits_at_last_at() {
        assert_eq!(
            split_login("test@mailserver.foo.com", None, "d"),
            ("test".into(), "mailserver.foo.com".into())
        );
        assert_eq!(split_login("test", None, "d"), ("test".into(), "d".into()));
        assert_eq!(
            split_login("test", Some("foo"), "d"),
            ("test".into(), "foo".into())
        );
        assert_eq!(split_login("a@b@c", None, "d"), ("a@b".into(), "c".into()));
        assert_eq!(
            split_login("test@", None, "d"),
            ("test@".into(), "d".into())
        );
    }

    #[test]
    fn authzid_needs_proxy_rights() {
        let mut cfg = Config::default();
        assert_eq!(
            authorize(&cfg, "kurt@r", None, "kurt@r"),
            Ok("kurt@r".into())
        );
        assert_eq!(
            authorize(&cfg, "kurt@r", Some("kurt@r"), "kurt@r"),
            Ok("kurt@r".into())
        );
        assert_eq!(
            authorize(&cfg, "kurt@r", Some("ursel@r"), "kurt@r"),
            Err(())
        );
        cfg.sasl.proxy.insert(
            "kurt@r".into(),
            authrelay_config::WordList::from(["ursel@r"]),
        );
        assert_eq!(
            authorize(&cfg, "kurt@r", Some("ursel@r"), "kurt@r"),
            Ok("ursel@r".into())
        );
    }
}
