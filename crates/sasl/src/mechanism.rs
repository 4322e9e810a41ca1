//! The SASL mechanisms authrelay speaks, and the facts about each that the SMTP layer, the
//! credential store and the client's mechanism choice need — among them the [`SecretFamily`]
//! that verifies each. The two refer to each other, so they live together here, at the bottom
//! of the crate: this module imports nothing else of it.

use std::fmt;
use std::str::FromStr;

/// A SASL mechanism, serialised as its IANA name (e.g. `"SCRAM-SHA-256"`).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(into = "String", try_from = "String")]
pub enum Mechanism {
    /// RFC 4616.
    Plain,
    /// The de-facto `LOGIN` mechanism (draft-murchison-sasl-login).
    Login,
    /// RFC 2195.
    CramMd5,
    /// RFC 2831 (historic, RFC 6331), kept for old clients.
    DigestMd5,
    /// RFC 5802.
    ScramSha1,
    /// RFC 5802 with channel binding.
    ScramSha1Plus,
    /// RFC 7677.
    ScramSha256,
    /// RFC 7677 with channel binding.
    ScramSha256Plus,
    /// RFC 4422 Appendix A: identity from the TLS client certificate.
    External,
    /// RFC 7628: an OAuth 2.0 bearer token in a GS2 key-value message.
    OAuthBearer,
    /// Google's pre-RFC bearer token mechanism, still what most mail clients and hubs speak.
    XOAuth2,
}

/// A mechanism name that authrelay does not know.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown SASL mechanism \"{0}\"")]
pub struct UnknownMechanism(String);

impl UnknownMechanism {
    fn new(name: &str) -> Self {
        // The name may come from a client and ends up in logs: keep it only when it has the
        // shape of a mechanism name (RFC 4422 §3.1), so nothing else can be injected there.
        let looks_like_a_name = !name.is_empty()
            && name.len() <= 20
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        Self(if looks_like_a_name {
            name.to_owned()
        } else {
            "<invalid>".to_owned()
        })
    }

    /// The offending name, or `<invalid>` when it was not even shaped like one.
    pub fn name(&self) -> &str {
        &self.0
    }
}

impl Mechanism {
    /// Every mechanism, in declaration order.
    pub const ALL: [Mechanism; 11] = [
        Mechanism::Plain,
        Mechanism::Login,
        Mechanism::CramMd5,
        Mechanism::DigestMd5,
        Mechanism::ScramSha1,
        Mechanism::ScramSha1Plus,
        Mechanism::ScramSha256,
        Mechanism::ScramSha256Plus,
        Mechanism::External,
        Mechanism::OAuthBearer,
        Mechanism::XOAuth2,
    ];

    /// The IANA-registered name, as offered in EHLO and given in AUTH.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
            Mechanism::CramMd5 => "CRAM-MD5",
            Mechanism::DigestMd5 => "DIGEST-MD5",
            Mechanism::ScramSha1 => "SCRAM-SHA-1",
            Mechanism::ScramSha1Plus => "SCRAM-SHA-1-PLUS",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha256Plus => "SCRAM-SHA-256-PLUS",
            Mechanism::External => "EXTERNAL",
            Mechanism::OAuthBearer => "OAUTHBEARER",
            Mechanism::XOAuth2 => "XOAUTH2",
        }
    }

    /// Looks a mechanism up by name; SASL names are case-insensitive (RFC 4954 §4).
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(s))
    }

    /// The challenges the server sends before it needs anything of its own, given the
    /// client's initial response (`None`: none on the AUTH line). They are constants that
    /// hold no server state — PLAIN's, OAUTHBEARER's and XOAUTH2's empty challenge, LOGIN's
    /// `Username:` and `Password:` —
    /// so an SMTP layer may send them itself and hand the answers to the exchange in one go
    /// (sasl-auth's `StartRequest.responses`), instead of a round trip to the SASL server
    /// per prompt. Empty for every mechanism whose challenges carry a nonce.
    pub fn fixed_prompts(self, initial: Option<&[u8]>) -> &'static [&'static [u8]] {
        match (self, initial) {
            // The bearer mechanisms too: an empty challenge, then the client's message.
            (Mechanism::Plain | Mechanism::OAuthBearer | Mechanism::XOAuth2, None) => &[b""],
            // An empty initial response ("=") is no user name (see the server's LOGIN).
            (Mechanism::Login, None) | (Mechanism::Login, Some([])) => {
                &[LOGIN_USERNAME, LOGIN_PASSWORD]
            }
            (Mechanism::Login, Some(_)) => &[LOGIN_PASSWORD],
            _ => &[],
        }
    }

    /// The password itself — or a bearer token, as good as one until it expires — crosses
    /// the wire, so these may only be used under TLS (RFC 4954 §4, RFC 4616 §6, RFC 7628
    /// §5). A client sends them in the clear only when told to by name.
    pub fn is_plaintext(self) -> bool {
        matches!(
            self,
            Mechanism::Plain | Mechanism::Login | Mechanism::OAuthBearer | Mechanism::XOAuth2
        )
    }

    /// A bearer token crosses the wire: whoever reads it may replay it until it expires, so
    /// these are offered and accepted only under TLS, with no plaintext escape hatch
    /// (RFC 7628 §5: "MUST … TLS").
    pub fn uses_bearer_token(self) -> bool {
        matches!(self, Mechanism::OAuthBearer | Mechanism::XOAuth2)
    }

    /// The kind of stored secret the server needs to verify this mechanism; `None` for
    /// EXTERNAL, which is verified by the TLS layer, and the bearer token mechanisms,
    /// verified against the token issuer's keys.
    pub fn family(self) -> Option<SecretFamily> {
        match self {
            Mechanism::Plain | Mechanism::Login => Some(SecretFamily::Password),
            Mechanism::CramMd5 => Some(SecretFamily::CramMd5),
            Mechanism::DigestMd5 => Some(SecretFamily::DigestMd5),
            Mechanism::ScramSha1 | Mechanism::ScramSha1Plus => Some(SecretFamily::ScramSha1),
            Mechanism::ScramSha256 | Mechanism::ScramSha256Plus => Some(SecretFamily::ScramSha256),
            Mechanism::External | Mechanism::OAuthBearer | Mechanism::XOAuth2 => None,
        }
    }

    /// SCRAM-SHA-1 and SCRAM-SHA-256, with or without `-PLUS`.
    pub fn is_scram(self) -> bool {
        matches!(
            self.family(),
            Some(SecretFamily::ScramSha1 | SecretFamily::ScramSha256)
        )
    }

    /// The `-PLUS` variants, which bind the exchange to the TLS channel (RFC 5802 §6).
    pub fn needs_channel_binding(self) -> bool {
        matches!(self, Mechanism::ScramSha1Plus | Mechanism::ScramSha256Plus)
    }

    /// Security strength factor logged as `bits=`. DIGEST-MD5 reports 128 because that is
    /// what Cyrus SASL logs for it, and logs are compared against Cyrus-era ones.
    pub fn ssf(self) -> u32 {
        match self {
            Mechanism::DigestMd5 => 128,
            _ => 0,
        }
    }

    /// Preference when a client picks among the server's mechanisms: higher is better.
    /// EXTERNAL wins because a client certificate is stronger than any password. The bearer
    /// token mechanisms rank 0: they need a token, not a password, so a client chooses them
    /// by what it holds, never by strength over a password mechanism.
    pub fn strength(self) -> u8 {
        match self {
            Mechanism::Login => 1,
            Mechanism::Plain => 2,
            Mechanism::CramMd5 => 3,
            Mechanism::DigestMd5 => 4,
            Mechanism::ScramSha1 => 5,
            Mechanism::ScramSha1Plus => 6,
            Mechanism::ScramSha256 => 7,
            Mechanism::ScramSha256Plus => 8,
            Mechanism::External => 9,
            Mechanism::OAuthBearer | Mechanism::XOAuth2 => 0,
        }
    }

    /// Client-first mechanisms, which may put their first message on the AUTH line
    /// (RFC 4954 §4 initial response).
    pub fn has_initial_response(self) -> bool {
        matches!(
            self,
            Mechanism::Plain
                | Mechanism::ScramSha1
                | Mechanism::ScramSha1Plus
                | Mechanism::ScramSha256
                | Mechanism::ScramSha256Plus
                | Mechanism::External
                | Mechanism::OAuthBearer
                | Mechanism::XOAuth2
        )
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mechanism {
    type Err = UnknownMechanism;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_name(s).ok_or_else(|| UnknownMechanism::new(s))
    }
}

impl From<Mechanism> for String {
    fn from(m: Mechanism) -> String {
        m.name().to_owned()
    }
}

impl TryFrom<String> for Mechanism {
    type Error = UnknownMechanism;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl TryFrom<&str> for Mechanism {
    type Error = UnknownMechanism;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// A kind of stored secret; each verifies the mechanisms in [`SecretFamily::mechanisms`].
/// What each holds, and how it is derived, is the `secret` module's business.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum SecretFamily {
    Password,
    CramMd5,
    DigestMd5,
    ScramSha1,
    ScramSha256,
}

impl SecretFamily {
    pub const ALL: [SecretFamily; 5] = [
        SecretFamily::Password,
        SecretFamily::CramMd5,
        SecretFamily::DigestMd5,
        SecretFamily::ScramSha1,
        SecretFamily::ScramSha256,
    ];

    /// Stable lower-case name, as used in the credential store and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            SecretFamily::Password => "password",
            SecretFamily::CramMd5 => "cram-md5",
            SecretFamily::DigestMd5 => "digest-md5",
            SecretFamily::ScramSha1 => "scram-sha-1",
            SecretFamily::ScramSha256 => "scram-sha-256",
        }
    }

    /// Looks a family up by [`SecretFamily::name`], case-insensitively.
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(s))
    }

    /// The mechanisms this family's secret can verify.
    pub fn mechanisms(self) -> &'static [Mechanism] {
        match self {
            SecretFamily::Password => &[Mechanism::Plain, Mechanism::Login],
            SecretFamily::CramMd5 => &[Mechanism::CramMd5],
            SecretFamily::DigestMd5 => &[Mechanism::DigestMd5],
            SecretFamily::ScramSha1 => &[Mechanism::ScramSha1, Mechanism::ScramSha1Plus],
            SecretFamily::ScramSha256 => &[Mechanism::ScramSha256, Mechanism::ScramSha256Plus],
        }
    }

    /// The MD5-based families: their stored values are password-equivalent (RFC 6331 §1), so
    /// operators may want to refuse storing them.
    pub fn is_md5(self) -> bool {
        matches!(self, SecretFamily::CramMd5 | SecretFamily::DigestMd5)
    }
}

impl fmt::Display for SecretFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// LOGIN's prompts (draft-murchison-sasl-login §2.1). Constants: see `Mechanism::fixed_prompts`.
pub(crate) const LOGIN_USERNAME: &[u8] = b"Username:";
pub(crate) const LOGIN_PASSWORD: &[u8] = b"Password:";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_case_insensitively() {
        for m in Mechanism::ALL {
            assert_eq!(Mechanism::from_name(m.name()), Some(m));
            assert_eq!(
                Mechanism::from_name(&m.name().to_ascii_lowercase()),
                Some(m)
            );
            assert_eq!(m.to_string().parse::<Mechanism>(), Ok(m));
        }
        assert_eq!(Mechanism::from_name("GSSAPI"), None);
    }

    #[test]
    fn fixed_prompts_are_the_challenges_the_server_sends() {
        use crate::server::{ServerConfig, ServerExchange, Step};
        let cfg = ServerConfig::default();
        let answers: [&[u8]; 2] = [b"user", b"pencil"];
        for m in Mechanism::ALL {
            for initial in [None, Some(&b""[..]), Some(&b"user"[..])] {
                let prompts = m.fixed_prompts(initial);
                let mut ex = ServerExchange::new(m);
                let mut step = ex.start(&cfg, initial);
                for (i, p) in prompts.iter().enumerate() {
                    match &step {
                        Step::Challenge(c) => assert_eq!(&c[..], *p, "{m} {initial:?} prompt {i}"),
                        other => panic!("{m} {initial:?}: expected prompt {i}, got {other:?}"),
                    }
                    assert!(
                        ex.awaits_client_credentials(),
                        "{m}: a fixed prompt holds no state"
                    );
                    step = ex.step(&cfg, answers[i]);
                }
                // After the fixed prompts the server needs its own data or is done.
                if let Step::Challenge(c) = &step {
                    assert!(
                        !ex.awaits_client_credentials(),
                        "{m} {initial:?}: challenge {c:?} not listed as a fixed prompt"
                    );
                }
            }
        }
    }

    #[test]
    fn unknown_mechanism_error_never_echoes_odd_input() {
        let e = "GSS\r\nAPI".parse::<Mechanism>().unwrap_err();
        assert_eq!(e.name(), "<invalid>");
        let e = "GSSAPI".parse::<Mechanism>().unwrap_err();
        assert_eq!(e.name(), "GSSAPI");
    }

    #[test]
    fn bearer_token_mechanisms_have_their_registered_names() {
        assert_eq!(
            Mechanism::from_name("OAUTHBEARER"),
            Some(Mechanism::OAuthBearer)
        );
        assert_eq!(Mechanism::from_name("xoauth2"), Some(Mechanism::XOAuth2));
        assert!(Mechanism::OAuthBearer.uses_bearer_token());
        // Never chosen for a hop without TLS unless named (relay-queue's rule for plaintext).
        assert!(Mechanism::OAuthBearer.is_plaintext() && Mechanism::XOAuth2.is_plaintext());
        assert!(Mechanism::XOAuth2.has_initial_response());
    }

    #[test]
    fn serialises_as_its_name() {
        let json = serde_json::to_string(&Mechanism::ScramSha256Plus).unwrap();
        assert_eq!(json, "\"SCRAM-SHA-256-PLUS\"");
        let back: Mechanism = serde_json::from_str("\"cram-md5\"").unwrap();
        assert_eq!(back, Mechanism::CramMd5);
        assert!(serde_json::from_str::<Mechanism>("\"NTLM\"").is_err());
    }

    #[test]
    fn strength_orders_scram_plus_first_and_login_last() {
        let mut ms = Mechanism::ALL.to_vec();
        ms.sort_by_key(|m| std::cmp::Reverse(m.strength()));
        assert_eq!(
            ms,
            [
                Mechanism::External,
                Mechanism::ScramSha256Plus,
                Mechanism::ScramSha256,
                Mechanism::ScramSha1Plus,
                Mechanism::ScramSha1,
                Mechanism::DigestMd5,
                Mechanism::CramMd5,
                Mechanism::Plain,
                Mechanism::Login,
                Mechanism::OAuthBearer,
                Mechanism::XOAuth2,
            ]
        );
    }

    #[test]
    fn families_map_back_to_their_mechanisms() {
        for m in Mechanism::ALL {
            match m.family() {
                Some(f) => assert!(f.mechanisms().contains(&m), "{m}"),
                None => assert!(m == Mechanism::External || m.uses_bearer_token(), "{m}"),
            }
        }
    }

    #[test]
    fn family_names_round_trip() {
        for f in SecretFamily::ALL {
            assert_eq!(SecretFamily::from_name(f.name()), Some(f));
            for m in f.mechanisms() {
                assert_eq!(m.family(), Some(f));
            }
        }
        assert!(SecretFamily::CramMd5.is_md5() && SecretFamily::DigestMd5.is_md5());
        assert!(!SecretFamily::ScramSha256.is_md5());
    }
}
