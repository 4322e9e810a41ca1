//! DIGEST-MD5 pieces shared by the server and the client (RFC 2831).

use crate::md5ctx::md5;

/// At most this many directives in one message; RFC 2831 defines about a dozen, so more is
/// abuse, not a client.
const MAX_DIRECTIVES: usize = 64;

/// Parses an RFC 2831 §7.1 `#rule` list of `name=value` directives.
///
/// Values are tokens or quoted-strings with backslash escapes (RFC 2616 §2.2), so a comma
/// inside quotes is data. Empty list elements (`,,`) are allowed by the `#rule`. Names are
/// returned lower-cased (directive names are case-insensitive); duplicates are kept for the
/// caller to judge, since a challenge may legitimately repeat `realm`.
pub(crate) fn parse_directives(input: &str) -> Result<Vec<(String, String)>, &'static str> {
    let mut out = Vec::new();
    let mut chars = input.chars().peekable();
    let is_lws = |c: char| matches!(c, ' ' | '\t' | '\r' | '\n');
    loop {
        while chars.next_if(|&c| is_lws(c) || c == ',').is_some() {}
        if chars.peek().is_none() {
            return Ok(out);
        }
        if out.len() == MAX_DIRECTIVES {
            return Err("too many directives");
        }
        let mut name = String::new();
        while let Some(c) = chars.next_if(|&c| !is_lws(c) && !matches!(c, '=' | ',' | '"')) {
            name.push(c.to_ascii_lowercase());
        }
        if name.is_empty() {
            return Err("expected a directive name");
        }
        while chars.next_if(|&c| is_lws(c)).is_some() {}
        if chars.next() != Some('=') {
            return Err("expected '=' after a directive name");
        }
        while chars.next_if(|&c| is_lws(c)).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => return Err("unterminated quoted string"),
                    },
                    Some('"') => break,
                    Some(c) => value.push(c),
                    None => return Err("unterminated quoted string"),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|&c| !is_lws(c) && !matches!(c, ',' | '"')) {
                value.push(c);
            }
        }
        while chars.next_if(|&c| is_lws(c)).is_some() {}
        match chars.next() {
            None | Some(',') => {}
            Some(_) => return Err("expected ',' between directives"),
        }
        out.push((name, value));
    }
}

/// Quotes a value as an RFC 2616 quoted-string.
pub(crate) fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// `H({ username-value, ":", realm-value, ":", passwd })` (RFC 2831 §2.1.2.1): what the
/// server stores instead of the password.
pub(crate) fn user_realm_password_hash(user: &str, realm: &str, password: &[u8]) -> [u8; 16] {
    let mut data = Vec::with_capacity(user.len() + realm.len() + password.len() + 2);
    data.extend_from_slice(user.as_bytes());
    data.push(b':');
    data.extend_from_slice(realm.as_bytes());
    data.push(b':');
    data.extend_from_slice(password);
    md5(&data)
}

/// The values that enter the `response-value` computation (RFC 2831 §2.1.2.1).
pub(crate) struct DigestInputs<'a> {
    pub nonce: &'a str,
    pub cnonce: &'a str,
    pub nc: &'a str,
    pub qop: &'a str,
    pub digest_uri: &'a str,
    pub authzid: Option<&'a str>,
}

/// Which of the two digests to compute: the client's `response` (A2 starts with
/// "AUTHENTICATE") or the server's `rspauth` (A2 starts with an empty method).
#[derive(Clone, Copy)]
pub(crate) enum DigestKind {
    Response,
    RspAuth,
}

/// RFC 2831 §2.1.2.1 response-value, lower-case hex, for qop=auth with algorithm=md5-sess.
pub(crate) fn response_value(
    ha1_secret: &[u8; 16],
    p: &DigestInputs<'_>,
    kind: DigestKind,
) -> String {
    // A1 starts with the raw 16-byte digest, not its hex: the historic pitfall.
    let mut a1 = Vec::with_capacity(64);
    a1.extend_from_slice(ha1_secret);
    a1.push(b':');
    a1.extend_from_slice(p.nonce.as_bytes());
    a1.push(b':');
    a1.extend_from_slice(p.cnonce.as_bytes());
    if let Some(authzid) = p.authzid.filter(|a| !a.is_empty()) {
        a1.push(b':');
        a1.extend_from_slice(authzid.as_bytes());
    }
    let method = match kind {
        DigestKind::Response => "AUTHENTICATE",
        DigestKind::RspAuth => "",
    };
    let a2 = format!("{method}:{}", p.digest_uri);
    let kd = format!(
        "{}:{}:{}:{}:{}:{}",
        hex::encode(md5(&a1)),
        p.nonce,
        p.nc,
        p.cnonce,
        p.qop,
        hex::encode(md5(a2.as_bytes()))
    );
    hex::encode(md5(kd.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_quotes_escapes_and_commas_inside_quotes() {
        let d = parse_directives(
            " Realm = \"a,b\" ,, nonce=\"x\\\"y\\\\z\",qop=auth , charset=utf-8,\r\n maxbuf=65536,",
        )
        .unwrap();
        assert_eq!(
            d,
            vec![
                ("realm".into(), "a,b".into()),
                ("nonce".into(), "x\"y\\z".into()),
                ("qop".into(), "auth".into()),
                ("charset".into(), "utf-8".into()),
                ("maxbuf".into(), "65536".into()),
            ]
        );
    }

    #[test]
    fn rejects_broken_syntax() {
        for bad in [
            "realm",
            "realm=\"abc",
            "=x",
            "a=b c=d",
            "a=\"b\"c",
            "a=\"\\",
            "\"a\"=b",
        ] {
            assert!(parse_directives(bad).is_err(), "{bad:?}");
        }
        assert!(parse_directives(&"a=b,".repeat(65)).is_err());
    }

    #[test]
    fn quote_round_trips() {
        let d = parse_directives(&format!("realm={}", quote("we\"ird\\realm,x"))).unwrap();
        assert_eq!(d[0].1, "we\"ird\\realm,x");
    }

    #[test]
    fn rfc2831_imap_example() {
        let ha1 = user_realm_password_hash("chris", "elwood.innosoft.com", b"secret");
        let p = DigestInputs {
            nonce: "OA6MG9tEQGm2hh",
            cnonce: "OA6MHXh6VqTrRk",
            nc: "00000001",
            qop: "auth",
            digest_uri: "imap/elwood.innosoft.com",
            authzid: None,
        };
        assert_eq!(
            response_value(&ha1, &p, DigestKind::Response),
            "d388dad90d4bbd760a152321f2143af7"
        );
        assert_eq!(
            response_value(&ha1, &p, DigestKind::RspAuth),
            "ea40f60335c427b5527b84dbabcdfffd"
        );
    }
}
