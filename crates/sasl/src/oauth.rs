//! The messages of OAUTHBEARER (RFC 7628) and XOAUTH2 (Google's older form of it), both
//! directions, as bytes.
//!
//! Neither mechanism has a secret for the server to look up: the client sends a bearer
//! token and the server checks it against the issuer's keys. That check needs the network
//! (the issuer's JWKS), so it is not here: the server side parses the client's message into
//! a [`BearerMessage`], someone else verifies the token, and a failure goes back to the client
//! as an [`ErrorStatus`] JSON challenge (RFC 7628 §3.2.2) which the client answers with
//! [`DUMMY_RESPONSE`] before the server's final failure reply.
//!
//! ```text
//! C: n,a=user@example.com,^Ahost=server.example.com^Aport=587^Aauth=Bearer TOKEN^A^A
//! S: 334 base64({"status":"invalid_token","scope":"…","openid-configuration":"…"})
//! C: ^A
//! S: 535 5.7.8
//! ```
//!
//! XOAUTH2 sends `user=NAME^Aauth=Bearer TOKEN^A^A`; Google's server answers a bad token with
//! the same kind of JSON (`{"status":"401","schemes":"bearer","scope":"…"}`), and the client
//! answers that with an empty response.

use std::fmt;

use crate::scram::{escape_saslname, unescape_saslname};

/// RFC 7628 §3.1 `kvsep`.
const KVSEP: u8 = 0x01;

/// The client's answer to an error challenge (RFC 7628 §3.2.3: a single `kvsep`); the server
/// then fails the exchange.
pub const DUMMY_RESPONSE: &[u8] = b"\x01";

/// Largest token accepted. JWTs with a few claims and an RS256 signature are under 1.5 KiB;
/// Azure AD's carry group lists and reach ~4 KiB. The whole message still has to fit the
/// server's response limit.
pub const MAX_TOKEN: usize = 6144;

/// A bearer token: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(String);

impl BearerToken {
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    /// The token itself, for the verifier. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// What the client sent in its first OAUTHBEARER or XOAUTH2 message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BearerMessage {
    /// OAUTHBEARER's `a=` (absent or empty: `None`); XOAUTH2's `user=`. Either way, the user
    /// the client claims to be: it must be the token's user.
    pub authzid: Option<String>,
    /// `host=` (OAUTHBEARER only; RFC 7628 says SHOULD, clients often leave it out).
    pub host: Option<String>,
    /// `port=` (OAUTHBEARER only).
    pub port: Option<u16>,
    /// The `auth=Bearer` credential.
    pub token: BearerToken,
}

/// Why a client message could not be read. Static text: it is logged, and must never carry
/// the token or the user name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MalformedMessage(pub &'static str);

fn malformed(why: &'static str) -> MalformedMessage {
    MalformedMessage(why)
}

/// Parses an OAUTHBEARER client response (RFC 7628 §3.1):
/// `gs2-header kvsep *kvpair kvsep`, the GS2 header from RFC 5801 without channel binding.
pub fn parse_oauthbearer(message: &[u8]) -> Result<BearerMessage, MalformedMessage> {
    let text = std::str::from_utf8(message).map_err(|_| malformed("message is not UTF-8"))?;
    let (gs2, rest) = text
        .split_once(KVSEP as char)
        .ok_or(malformed("no kvsep after the GS2 header"))?;
    let authzid = parse_gs2_header(gs2)?;
    let pairs = parse_kvpairs(rest)?;
    let mut host = None;
    let mut port = None;
    let mut auth = None;
    for (key, value) in pairs {
        // RFC 7628 §3.1: keys are case-sensitive, unknown ones are ignored, but a key given
        // twice could make us and an upstream proxy read different tokens.
        let slot = match key {
            "host" => &mut host,
            "port" => &mut port,
            "auth" => &mut auth,
            _ => continue,
        };
        if slot.replace(value).is_some() {
            return Err(malformed("duplicated key"));
        }
    }
    let port = port
        .map(|p| {
            p.parse::<u16>()
                .map_err(|_| malformed("port is not a number"))
        })
        .transpose()?;
    let token = bearer_credential(auth.ok_or(malformed("no auth= key"))?)?;
    Ok(BearerMessage {
        authzid,
        host: host.map(str::to_owned),
        port,
        token,
    })
}

/// Parses an XOAUTH2 client response: `user=NAME ^A auth=Bearer TOKEN ^A ^A`.
pub fn parse_xoauth2(message: &[u8]) -> Result<BearerMessage, MalformedMessage> {
    let text = std::str::from_utf8(message).map_err(|_| malformed("message is not UTF-8"))?;
    let mut user = None;
    let mut auth = None;
    for (key, value) in parse_kvpairs(text)? {
        let slot = match key {
            "user" => &mut user,
            "auth" => &mut auth,
            _ => continue,
        };
        if slot.replace(value).is_some() {
            return Err(malformed("duplicated key"));
        }
    }
    let user = user.ok_or(malformed("no user= key"))?;
    if user.is_empty() {
        return Err(malformed("empty user"));
    }
    let token = bearer_credential(auth.ok_or(malformed("no auth= key"))?)?;
    Ok(BearerMessage {
        authzid: Some(user.to_owned()),
        host: None,
        port: None,
        token,
    })
}

/// RFC 5801 §4 `gs2-header` without its trailing comma's successor: `n,[a=saslname],`.
/// OAUTHBEARER has no channel binding (RFC 7628 §3.1), so `p=` is refused; `y` only says the
/// client could bind, which no `-PLUS` variant of ours exists to contradict.
fn parse_gs2_header(gs2: &str) -> Result<Option<String>, MalformedMessage> {
    let mut parts = gs2.splitn(3, ',');
    let (Some(flag), Some(authzid), Some("")) = (parts.next(), parts.next(), parts.next()) else {
        return Err(malformed("GS2 header must be 'n,[a=authzid],'"));
    };
    match flag {
        "n" | "y" => {}
        f if f.starts_with("p=") => return Err(malformed("OAUTHBEARER has no channel binding")),
        _ => return Err(malformed("bad GS2 channel binding flag")),
    }
    if authzid.is_empty() {
        return Ok(None);
    }
    let name = authzid
        .strip_prefix("a=")
        .ok_or(malformed("GS2 authzid must start with a="))?;
    let name = unescape_saslname(name).map_err(malformed)?;
    Ok(Some(name).filter(|n| !n.is_empty()))
}

/// `*kvpair kvsep` where `kvpair = key "=" value kvsep`: the pairs up to the empty one that
/// ends the message. Nothing may follow it.
fn parse_kvpairs(text: &str) -> Result<Vec<(&str, &str)>, MalformedMessage> {
    let body = text
        .strip_suffix(KVSEP as char)
        .ok_or(malformed("message must end with kvsep"))?;
    if body.is_empty() {
        return Ok(Vec::new());
    }
    let body = body
        .strip_suffix(KVSEP as char)
        .ok_or(malformed("message must end with an empty kvpair"))?;
    body.split(KVSEP as char)
        .map(|pair| {
            let (key, value) = pair
                .split_once('=')
                .ok_or(malformed("kvpair without '='"))?;
            // key = 1*ALPHA; value = *(VCHAR / SP / HTAB / CR / LF)
            if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphabetic()) {
                return Err(malformed("bad key"));
            }
            // UTF-8 beyond ASCII is not VCHAR, but real clients send it in XOAUTH2's user=
            // (an internationalised address); control characters are refused.
            let value_ok = value
                .chars()
                .all(|c| !c.is_control() || matches!(c, ' ' | '\t' | '\r' | '\n'));
            if !value_ok {
                return Err(malformed("bad value"));
            }
            Ok((key, value))
        })
        .collect()
}

/// RFC 6750 §2.1 `credentials = "Bearer" 1*SP b64token`; the scheme is case-insensitive
/// (RFC 7235 §2.1).
fn bearer_credential(auth: &str) -> Result<BearerToken, MalformedMessage> {
    let (scheme, token) = auth
        .split_once(' ')
        .ok_or(malformed("auth= needs 'Bearer TOKEN'"))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(malformed("auth scheme is not Bearer"));
    }
    let token = token.trim_start_matches(' ');
    if token.is_empty() {
        return Err(malformed("empty bearer token"));
    }
    if token.len() > MAX_TOKEN {
        return Err(malformed("bearer token too long"));
    }
    // b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
    let body = token.trim_end_matches('=');
    let b64token = !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b));
    if !b64token {
        return Err(malformed("bearer token is not a b64token"));
    }
    Ok(BearerToken::new(token))
}

/// Whether a client's answer to our error challenge is what RFC 7628 §3.2.3 asks for
/// (`kvsep`), or XOAUTH2's empty one. Either way the exchange then fails; this only says
/// whether the client followed the protocol.
pub fn is_dummy_response(response: &[u8]) -> bool {
    response == DUMMY_RESPONSE || response.is_empty()
}

/// The OAUTHBEARER client's first message (RFC 7628 §3.1). `host`/`port` are what the
/// client connected to; RFC 7628 asks for them (SHOULD) so a token stolen by one server
/// cannot be replayed to another that checks them.
pub fn oauthbearer_message(
    authzid: Option<&str>,
    host: Option<&str>,
    port: Option<u16>,
    token: &str,
) -> Vec<u8> {
    let mut out = String::from("n,");
    if let Some(a) = authzid.filter(|a| !a.is_empty()) {
        out.push_str("a=");
        out.push_str(&escape_saslname(a));
    }
    out.push(',');
    out.push(KVSEP as char);
    if let Some(h) = host.filter(|h| !h.is_empty()) {
        out.push_str("host=");
        out.push_str(h);
        out.push(KVSEP as char);
    }
    if let Some(p) = port {
        out.push_str(&format!("port={p}"));
        out.push(KVSEP as char);
    }
    out.push_str("auth=Bearer ");
    out.push_str(token);
    out.push(KVSEP as char);
    out.push(KVSEP as char);
    out.into_bytes()
}

/// The XOAUTH2 client message: `user=USER ^A auth=Bearer TOKEN ^A ^A`.
pub fn xoauth2_message(user: &str, token: &str) -> Vec<u8> {
    format!("user={user}\x01auth=Bearer {token}\x01\x01").into_bytes()
}

/// The error a server sends as a challenge when it refuses a token (RFC 7628 §3.2.2):
/// what a client needs to fetch a better one.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ErrorStatus {
    /// `invalid_token`, `insufficient_scope`, … (RFC 6749 §5.2 / RFC 6750 §3.1); Google's
    /// XOAUTH2 sends an HTTP status (`"401"`).
    pub status: String,
    /// Scopes a token would need, space-separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Where the client finds the issuer's metadata (OpenID Connect discovery).
    #[serde(
        rename = "openid-configuration",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub openid_configuration: Option<String>,
    /// Google's XOAUTH2 and RFC 7628 §4.4's example add the schemes accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schemes: Option<String>,
}

impl ErrorStatus {
    /// `{"status":"invalid_token"}`: the token was refused, whatever the reason. RFC 7628
    /// §3.2.2 lets the server say no more, and a client needs no more to fetch a new one.
    pub fn invalid_token() -> Self {
        Self {
            status: "invalid_token".into(),
            ..Self::default()
        }
    }

    /// The challenge bytes (JSON; base64 is the SMTP layer's job).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_else(|_| br#"{"status":"invalid_token"}"#.to_vec())
    }

    /// Reads a server's error challenge. Unknown members are ignored (RFC 7628 §3.2.2 allows
    /// extensions).
    pub fn from_json(challenge: &[u8]) -> Result<Self, MalformedMessage> {
        serde_json::from_slice(challenge)
            .map_err(|_| malformed("error challenge is not the JSON of RFC 7628 §3.2.2"))
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as B64;

    use super::*;

    fn b64(s: &str) -> Vec<u8> {
        B64.decode(s.split_whitespace().collect::<String>())
            .unwrap()
    }

    // RFC 7628 §4.1 (IMAP; the SMTP example of §4.4 differs only in the port).
    const RFC_4_1: &str = "bixhPXVzZXJAZXhhbXBsZS5jb20sAWhv
        c3Q9c2VydmVyLmV4YW1wbGUuY29tAXBvcnQ9MTQzAWF1dGg9QmVhcmVyIHZGOWRm
        dDRxbVRjMk52YjNSbGNrQmhiSFJoZG1semRHRXVZMjl0Q2c9PQEB";
    const RFC_TOKEN: &str = "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==";

    #[test]
    fn rfc7628_4_1_client_response_parses() {
        let raw = b64(RFC_4_1);
        assert_eq!(
            raw,
            b"n,a=user@example.com,\x01host=server.example.com\x01port=143\x01auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01"
        );
        let m = parse_oauthbearer(&raw).unwrap();
        assert_eq!(m.authzid.as_deref(), Some("user@example.com"));
        assert_eq!(m.host.as_deref(), Some("server.example.com"));
        assert_eq!(m.port, Some(143));
        assert_eq!(m.token.expose(), RFC_TOKEN);
    }

    #[test]
    fn rfc7628_4_1_client_response_is_what_the_builder_writes() {
        let built = oauthbearer_message(
            Some("user@example.com"),
            Some("server.example.com"),
            Some(143),
            RFC_TOKEN,
        );
        assert_eq!(built, b64(RFC_4_1));
    }

    #[test]
    fn rfc7628_4_4_smtp_client_response_parses() {
        let raw = b64(
            "bixhPXVzZXJAZXhhbXBsZS5jb20sAWhvc3Q9c2VydmVyLmV4YW1wbGUuY29tAXBvcnQ9NTg3AWF1dGg9QmVhcmVyIHZGOWRmdDRxbVRjMk52YjNSbGNrQmhiSFJoZG1semRHRXVZMjl0Q2c9PQEB",
        );
        let m = parse_oauthbearer(&raw).unwrap();
        assert_eq!(m.port, Some(587));
        assert_eq!(m.token.expose(), RFC_TOKEN);
    }

    #[test]
    fn rfc7628_4_3_error_challenge_round_trips() {
        let wire = b64(
            "eyJzdGF0dXMiOiJpbnZhbGlkX3Rva2VuIiwic2NvcGUiOiJleGFtcGxlX3Nj
            b3BlIiwib3BlbmlkLWNvbmZpZ3VyYXRpb24iOiJodHRwczovL2V4YW1wbGUuY29
            tLy53ZWxsLWtub3duL29wZW5pZC1jb25maWd1cmF0aW9uIn0=",
        );
        let e = ErrorStatus::from_json(&wire).unwrap();
        assert_eq!(e.status, "invalid_token");
        assert_eq!(e.scope.as_deref(), Some("example_scope"));
        assert_eq!(
            e.openid_configuration.as_deref(),
            Some("https://example.com/.well-known/openid-configuration")
        );
        // Our server writes the members in the RFC's order: the same bytes.
        assert_eq!(e.to_json(), wire);
    }

    #[test]
    fn rfc7628_4_4_smtp_error_challenge_with_schemes_parses() {
        let wire = b64(
            "eyJzdGF0dXMiOiJpbnZhbGlkX3Rva2VuIiwic2NoZW1lcyI6ImJlYXJlciBtYWMiLCJzY29wZSI6Imh0dHBzOi8vbWFpbC5leGFtcGxlLmNvbS8ifQ==",
        );
        let e = ErrorStatus::from_json(&wire).unwrap();
        assert_eq!(e.status, "invalid_token");
        assert_eq!(e.schemes.as_deref(), Some("bearer mac"));
        assert_eq!(e.scope.as_deref(), Some("https://mail.example.com/"));
    }

    #[test]
    fn rfc7628_3_2_3_dummy_response_is_one_kvsep() {
        assert_eq!(b64("AQ=="), DUMMY_RESPONSE);
        assert!(is_dummy_response(DUMMY_RESPONSE));
        assert!(is_dummy_response(b""));
        assert!(!is_dummy_response(b"\x01\x01"));
    }

    #[test]
    fn invalid_token_error_is_minimal_json() {
        assert_eq!(
            ErrorStatus::invalid_token().to_json(),
            br#"{"status":"invalid_token"}"#
        );
    }

    #[test]
    fn error_json_without_status_is_refused() {
        assert!(ErrorStatus::from_json(br#"{"scope":"x"}"#).is_err());
        assert!(ErrorStatus::from_json(b"not json").is_err());
    }

    #[test]
    fn google_xoauth2_error_parses() {
        let e = ErrorStatus::from_json(
            br#"{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}"#,
        )
        .unwrap();
        assert_eq!(e.status, "401");
    }

    #[test]
    fn oauthbearer_without_authzid_or_host() {
        let m = parse_oauthbearer(b"n,,\x01auth=Bearer abc.def.ghi\x01\x01").unwrap();
        assert_eq!(m.authzid, None);
        assert_eq!(m.host, None);
        assert_eq!(m.port, None);
        assert_eq!(m.token.expose(), "abc.def.ghi");
        assert_eq!(
            oauthbearer_message(None, None, None, "abc.def.ghi"),
            b"n,,\x01auth=Bearer abc.def.ghi\x01\x01"
        );
    }

    #[test]
    fn oauthbearer_authzid_is_a_saslname() {
        let built = oauthbearer_message(Some("a,b=c"), None, None, "t");
        assert_eq!(built, b"n,a=a=2Cb=3Dc,\x01auth=Bearer t\x01\x01");
        let m = parse_oauthbearer(&built).unwrap();
        assert_eq!(m.authzid.as_deref(), Some("a,b=c"));
        assert!(parse_oauthbearer(b"n,a=a=2Xb,\x01auth=Bearer t\x01\x01").is_err());
    }

    #[test]
    fn oauthbearer_scheme_is_case_insensitive() {
        let m = parse_oauthbearer(b"n,,\x01auth=bearer t0k\x01\x01").unwrap();
        assert_eq!(m.token.expose(), "t0k");
    }

    #[test]
    fn oauthbearer_ignores_unknown_keys() {
        let m = parse_oauthbearer(b"n,,\x01mthd=POST\x01auth=Bearer t\x01\x01").unwrap();
        assert_eq!(m.token.expose(), "t");
    }

    #[test]
    fn oauthbearer_refuses_channel_binding() {
        let e = parse_oauthbearer(b"p=tls-exporter,,\x01auth=Bearer t\x01\x01").unwrap_err();
        assert_eq!(e.0, "OAUTHBEARER has no channel binding");
        assert!(parse_oauthbearer(b"y,,\x01auth=Bearer t\x01\x01").is_ok());
    }

    #[test]
    fn oauthbearer_malformed_messages_are_refused() {
        for bad in [
            &b""[..],
            b"\x01",
            b"n,,\x01\x01",                                   // no auth
            b"n,,\x01auth=Bearer t\x01",                      // missing final kvsep
            b"n,,\x01auth=Bearer t",                          // no kvseps
            b"n,\x01auth=Bearer t\x01\x01",                   // GS2 header short
            b"x,,\x01auth=Bearer t\x01\x01",                  // bad flag
            b"n,u=x,\x01auth=Bearer t\x01\x01",               // authzid without a=
            b"n,,\x01auth=Basic dXNlcjpwdw==\x01\x01",        // not Bearer
            b"n,,\x01auth=Bearer \x01\x01",                   // empty token
            b"n,,\x01auth=Bearer a b\x01\x01",                // not a b64token
            b"n,,\x01auth=Bearer t\x01auth=Bearer u\x01\x01", // two tokens
            b"n,,\x01port=x\x01auth=Bearer t\x01\x01",        // bad port
            b"n,,\x01=v\x01auth=Bearer t\x01\x01",            // empty key
            b"n,,\x01auth=Bearer t\x01\x01extra",             // trailing bytes
            b"n,,\x01auth=Bearer \xff\x01\x01",               // not UTF-8
        ] {
            assert!(parse_oauthbearer(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn oversized_token_is_refused() {
        let token = "a".repeat(MAX_TOKEN + 1);
        let msg = oauthbearer_message(None, None, None, &token);
        assert_eq!(
            parse_oauthbearer(&msg).unwrap_err().0,
            "bearer token too long"
        );
    }

    #[test]
    fn xoauth2_message_round_trips() {
        let built = xoauth2_message(
            "someuser@example.com",
            "ya29.vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg",
        );
        // Google's documented example (developers.google.com/gmail/imap/xoauth2-protocol).
        assert_eq!(
            built,
            b"user=someuser@example.com\x01auth=Bearer ya29.vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg\x01\x01"
        );
        let m = parse_xoauth2(&built).unwrap();
        assert_eq!(m.authzid.as_deref(), Some("someuser@example.com"));
        assert_eq!(
            m.token.expose(),
            "ya29.vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg"
        );
    }

    #[test]
    fn xoauth2_malformed_messages_are_refused() {
        for bad in [
            &b""[..],
            b"user=a\x01\x01",
            b"auth=Bearer t\x01\x01",
            b"user=\x01auth=Bearer t\x01\x01",
            b"user=a\x01auth=Bearer t\x01",
            b"user=a\x01user=b\x01auth=Bearer t\x01\x01",
            b"n,,\x01auth=Bearer t\x01\x01",
        ] {
            assert!(parse_xoauth2(bad).is_err(), "{bad:?}");
        }
    }

    fn client(mechanism: crate::Mechanism) -> crate::ClientExchange {
        let mut creds = crate::ClientCredentials::new("user@example.com", "vF9dft4qmTc2");
        creds.host = "server.example.com".into();
        crate::ClientExchange::new(mechanism, creds).unwrap()
    }

    #[test]
    fn oauthbearer_client_sends_its_message_first() {
        let mut c = client(crate::Mechanism::OAuthBearer);
        let first = c.initial_response().unwrap();
        assert_eq!(
            first,
            b"n,a=user@example.com,\x01host=server.example.com\x01auth=Bearer vF9dft4qmTc2\x01\x01"
        );
        assert!(parse_oauthbearer(&first).is_ok());
        // 235 with no additional data.
        assert_eq!(c.verify_final(b""), Ok(()));
    }

    #[test]
    fn oauthbearer_client_answers_an_error_with_the_dummy_response() {
        let mut c = client(crate::Mechanism::OAuthBearer);
        c.initial_response().unwrap();
        let step = c.step(&ErrorStatus::invalid_token().to_json()).unwrap();
        assert_eq!(step, crate::ClientStep::Respond(DUMMY_RESPONSE.to_vec()));
        assert_eq!(c.oauth_error().unwrap().status, "invalid_token");
        // Only one error challenge.
        assert!(c.step(b"{}").is_err());
    }

    #[test]
    fn xoauth2_client_answers_an_error_with_an_empty_response() {
        let mut c = client(crate::Mechanism::XOAuth2);
        let first = c.initial_response().unwrap();
        assert_eq!(
            first,
            b"user=user@example.com\x01auth=Bearer vF9dft4qmTc2\x01\x01"
        );
        let step = c.step(br#"{"status":"401","schemes":"bearer"}"#).unwrap();
        assert_eq!(step, crate::ClientStep::Respond(Vec::new()));
        assert_eq!(c.oauth_error().unwrap().status, "401");
    }

    #[test]
    fn client_refuses_a_token_that_would_break_the_message() {
        for token in ["", "a\x01b", "a b"] {
            let creds = crate::ClientCredentials::new("u", token);
            assert!(crate::ClientExchange::new(crate::Mechanism::OAuthBearer, creds).is_err());
        }
    }

    #[test]
    fn token_never_shows_in_debug() {
        let m = parse_xoauth2(b"user=a\x01auth=Bearer sekrit\x01\x01").unwrap();
        assert!(!format!("{m:?}").contains("sekrit"));
    }
}
