//! AUTH to the next hop (RFC 4954) as its AuthInfo entry says: which
//! mechanism, the SASL exchange with the shared client mechanisms, and for
//! an entry with a token source the access token, dropped and fetched anew
//! once when the hub refuses it.

use authrelay_config::{AuthInfo, AuthSecret};
use authrelay_sasl::{ClientCredentials, ClientExchange, ClientStep, Mechanism};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use super::Conn;
use super::reply::{Extensions, Reply, auth_flag};
use crate::error::{AuthError, DeliveryError, LinkError};
use crate::oauth::{TokenError, TokenSource};

/// The mechanism to use with a hop: the strongest that it offers (`offered`:
/// smtp-proto's `AUTH_*` flags of its EHLO reply) and the
/// AuthInfo entry allows. An entry with a token source uses XOAUTH2 or
/// OAUTHBEARER (OAUTHBEARER, the standard, when both are offered), one with
/// a password the others. PLAIN and LOGIN send the password itself, so in
/// the clear only when the entry names them; a bearer token only under TLS,
/// unless the hop is configured without TLS at all (`clear_hop`) and the
/// entry names the mechanism; `-PLUS` only with channel binding.
pub fn choose_mechanism(
    info: &AuthInfo,
    offered: u64,
    tls: bool,
    channel_binding: bool,
    clear_hop: bool,
) -> Option<Mechanism> {
    let token = info.token_source().is_some();
    let allowed: Vec<Mechanism> = if info.mechanisms.is_empty() {
        Mechanism::ALL
            .into_iter()
            .filter(|m| *m != Mechanism::External)
            .collect()
    } else {
        info.mechanisms.clone()
    };
    let listed = |m: &Mechanism| info.mechanisms.contains(m);
    allowed
        .into_iter()
        .filter(|m| m.uses_bearer_token() == token)
        .filter(|m| offered & auth_flag(*m) != 0)
        .filter(|m| {
            tls || if m.uses_bearer_token() {
                clear_hop && listed(m)
            } else {
                !m.is_plaintext() || listed(m)
            }
        })
        .filter(|m| channel_binding || !m.needs_channel_binding())
        .filter(|m| *m != Mechanism::External)
        .max_by_key(|m| (m.strength(), *m == Mechanism::OAuthBearer))
}

/// RFC 4954 AUTH as a client, with the shared SASL client mechanisms. Any
/// failure is temporary for the message: a wrong password is fixed by the
/// operator, not by bouncing the mail. With a token source, a refused token
/// is dropped and the exchange tried once more with a new one.
pub(super) async fn authenticate(
    c: &mut Conn,
    host: &str,
    info: &AuthInfo,
    tokens: Option<&TokenSource>,
    offered: &Extensions,
    clear_hop: bool,
) -> Result<Mechanism, DeliveryError> {
    let Some(mech) = choose_mechanism(
        info,
        offered.auth_flags(),
        c.tls,
        c.channel_binding.is_some(),
        clear_hop,
    ) else {
        let allowed: Vec<&str> = info.mechanisms.iter().map(|m| m.name()).collect();
        let why = format!(
            "no usable mechanism (offered: {}; allowed: {}{})",
            offered.auth_words().join(" "),
            if allowed.is_empty() {
                if info.token_source().is_some() {
                    "XOAUTH2 OAUTHBEARER".to_owned()
                } else {
                    "any".to_owned()
                }
            } else {
                allowed.join(" ")
            },
            match (c.tls, info.token_source().is_some()) {
                (true, _) => "",
                (false, true) => "; XOAUTH2/OAUTHBEARER need TLS",
                (false, false) => "; PLAIN/LOGIN need TLS unless listed in M",
            }
        );
        tracing::warn!("AUTH=client, relay={host}, {why}");
        return Err(AuthError::NoMechanism {
            host: host.to_owned(),
            why,
        }
        .into());
    };
    tracing::Span::current().record("sasl.mechanism", mech.name());
    let fail = |e: AuthError| {
        tracing::warn!(
            "AUTH=client, relay={host}, mech={mech}, failure: {}",
            e.why()
        );
        DeliveryError::from(e)
    };
    let verdict = match (info.secret.clone(), tokens) {
        (AuthSecret::Password(pw), _) => {
            exchange(c, host, info, mech, pw.expose().to_owned()).await?
        }
        (AuthSecret::TokenSource(name), None) => {
            return Err(fail(AuthError::NoTokenSource {
                mech,
                host: host.to_owned(),
                name,
            }));
        }
        (AuthSecret::TokenSource(_), Some(source)) => {
            let token_failed = |e: TokenError| {
                tracing::warn!(
                    "AUTH=client, relay={host}, mech={mech}, token_source={}, no token: {e}",
                    source.name
                );
                DeliveryError::from(AuthError::Token {
                    mech,
                    host: host.to_owned(),
                    source_name: source.name.clone(),
                    error: e,
                })
            };
            let lease = source.token().await.map_err(token_failed)?;
            match exchange(c, host, info, mech, lease.token.expose().to_owned()).await? {
                // The token was refused: the error JSON said so, or the hub
                // answered 535 without one (Microsoft 365's "5.7.3
                // Authentication unsuccessful"). A 454 or another code
                // without the JSON is the hub's own trouble, not the token's.
                Outcome::Refused { reply, oauth } if oauth.is_some() || reply.code == 535 => {
                    // RFC 7628 §3.2.2 / Google: the token expired or was
                    // revoked. One more try with a new one; a second
                    // refusal is the operator's to look at.
                    tracing::info!(
                        "AUTH=client, relay={host}, mech={mech}, token_source={}, token refused ({}{}); fetching a new token and retrying once",
                        source.name,
                        reply,
                        oauth.map(|s| format!(", status={s}")).unwrap_or_default()
                    );
                    source.invalidate(lease.generation).await;
                    let lease = source.token().await.map_err(token_failed)?;
                    exchange(c, host, info, mech, lease.token.expose().to_owned()).await?
                }
                other => other,
            }
        }
    };
    match verdict {
        Outcome::Accepted => {
            tracing::info!(
                target: "auth",
                "AUTH=client, relay={host}, mech={mech}, bits={}",
                mech.ssf()
            );
            Ok(mech)
        }
        Outcome::Refused { reply, oauth } => Err(fail(AuthError::Refused {
            mech,
            host: host.to_owned(),
            reply,
            token_status: oauth,
        })),
        Outcome::Broken(why) => Err(fail(AuthError::Exchange {
            mech,
            host: host.to_owned(),
            why,
        })),
    }
}

/// How one SASL exchange ended, the connection still usable.
enum Outcome {
    Accepted,
    /// The hub said no; for the bearer mechanisms, `oauth` is the status of
    /// the error JSON it sent first, if any.
    Refused {
        reply: Reply,
        oauth: Option<String>,
    },
    /// Our side could not go on (a malformed challenge, a server proof that
    /// did not verify); the exchange was cancelled.
    Broken(String),
}

/// One AUTH command and its challenges. `secret` is the password, or the
/// bearer token for XOAUTH2/OAUTHBEARER.
async fn exchange(
    c: &mut Conn,
    host: &str,
    info: &AuthInfo,
    mech: Mechanism,
    secret: String,
) -> Result<Outcome, LinkError> {
    // Our server (and Cyrus with a realm) names users NAME@REALM; DIGEST-MD5
    // carries the realm in its own field instead.
    let authcid = match &info.realm {
        Some(realm) if mech != Mechanism::DigestMd5 && !info.authid.contains('@') => {
            format!("{}@{realm}", info.authid)
        }
        _ => info.authid.clone(),
    };
    let creds = ClientCredentials {
        authcid,
        authzid: info.authzid.clone(),
        password: secret,
        realm: info.realm.clone(),
        service: "smtp".to_owned(),
        host: host.to_owned(),
        // Binding only for -PLUS: offering it to a plain SCRAM exchange would
        // send "y", which a server that advertised -PLUS takes as a downgrade.
        channel_binding: c
            .channel_binding
            .clone()
            .filter(|_| mech.needs_channel_binding()),
    };
    let mut exchange = match ClientExchange::new(mech, creds) {
        Ok(x) => x,
        Err(e) => return Ok(Outcome::Broken(e.to_string())),
    };
    let mut line = format!("AUTH {mech}");
    if let Some(initial) = exchange.initial_response() {
        // RFC 4954 §4: "=" is an empty initial response.
        line.push(' ');
        line.push_str(&if initial.is_empty() {
            "=".to_owned()
        } else {
            B64.encode(initial)
        });
    }
    // Bounded: every mechanism here finishes in at most three round trips.
    for _ in 0..6 {
        let reply = c.send(&line).await?;
        match reply.code {
            334 => {
                let challenge = reply.lines.first().map(|l| l.trim()).unwrap_or("");
                let Ok(challenge) = B64.decode(challenge) else {
                    let _ = c.send("*").await;
                    return Ok(Outcome::Broken("challenge is not base64".into()));
                };
                match exchange.step(&challenge) {
                    Ok(ClientStep::Respond(bytes)) => line = B64.encode(bytes),
                    Ok(ClientStep::Done) => line = String::new(),
                    Err(e) => {
                        // RFC 4954 §4: "*" cancels the exchange.
                        let _ = c.send("*").await;
                        return Ok(Outcome::Broken(e.to_string()));
                    }
                }
            }
            235 => {
                if !exchange.is_finished()
                    && let Err(e) = exchange.verify_final(&[])
                {
                    return Ok(Outcome::Broken(e.to_string()));
                }
                return Ok(Outcome::Accepted);
            }
            _ => {
                return Ok(Outcome::Refused {
                    oauth: exchange.oauth_error().map(|e| e.status.clone()),
                    reply,
                });
            }
        }
    }
    Ok(Outcome::Broken("too many challenges".into()))
}

#[cfg(test)]
mod choose_tests {
    use super::*;
    use authrelay_config::Password;

    /// The flags of an EHLO `AUTH` line offering `names`.
    fn offer(names: &[&str]) -> u64 {
        names
            .iter()
            .map(|n| auth_flag(Mechanism::from_name(n).expect("a known mechanism")))
            .fold(0, |a, b| a | b)
    }

    fn info(mechs: &[Mechanism]) -> AuthInfo {
        AuthInfo {
            host: "h".into(),
            authzid: None,
            authid: "u".into(),
            secret: AuthSecret::Password(Password::new("p")),
            realm: None,
            mechanisms: mechs.to_vec(),
        }
    }

    #[test]
    fn strongest_common_mechanism_wins() {
        let offered = ["PLAIN", "CRAM-MD5", "DIGEST-MD5", "SCRAM-SHA-256"];
        assert_eq!(
            choose_mechanism(&info(&[]), offer(&offered), true, false, false),
            Some(Mechanism::ScramSha256)
        );
        assert_eq!(
            choose_mechanism(
                &info(&[Mechanism::DigestMd5]),
                offer(&offered),
                false,
                false,
                false
            ),
            Some(Mechanism::DigestMd5)
        );
    }

    #[test]
    fn plaintext_mechanisms_in_the_clear_only_when_listed() {
        assert_eq!(
            choose_mechanism(&info(&[]), offer(&["PLAIN", "LOGIN"]), false, false, false),
            None
        );
        assert_eq!(
            choose_mechanism(&info(&[]), offer(&["PLAIN", "LOGIN"]), true, false, false),
            Some(Mechanism::Plain)
        );
        assert_eq!(
            choose_mechanism(
                &info(&[Mechanism::Login]),
                offer(&["PLAIN", "LOGIN"]),
                false,
                false,
                false
            ),
            Some(Mechanism::Login)
        );
    }

    fn token_info(mechs: &[Mechanism]) -> AuthInfo {
        AuthInfo {
            secret: AuthSecret::TokenSource("hub".into()),
            ..info(mechs)
        }
    }

    #[test]
    fn a_token_source_entry_uses_only_bearer_mechanisms_and_prefers_oauthbearer() {
        let offered = ["PLAIN", "LOGIN", "XOAUTH2", "OAUTHBEARER", "SCRAM-SHA-256"];
        assert_eq!(
            choose_mechanism(&token_info(&[]), offer(&offered), true, false, false),
            Some(Mechanism::OAuthBearer)
        );
        assert_eq!(
            choose_mechanism(
                &token_info(&[]),
                offer(&["PLAIN", "XOAUTH2"]),
                true,
                false,
                false
            ),
            Some(Mechanism::XOAuth2)
        );
        assert_eq!(
            choose_mechanism(
                &token_info(&[]),
                offer(&["PLAIN", "LOGIN"]),
                true,
                false,
                false
            ),
            None
        );
        // A password entry never picks a bearer mechanism, even when it is
        // all the hop offers.
        assert_eq!(
            choose_mechanism(
                &info(&[]),
                offer(&["XOAUTH2", "OAUTHBEARER"]),
                true,
                false,
                false
            ),
            None
        );
    }

    #[test]
    fn bearer_tokens_go_in_the_clear_only_to_a_no_tls_hop_that_lists_them() {
        let x = [Mechanism::XOAuth2];
        assert_eq!(
            choose_mechanism(&token_info(&x), offer(&["XOAUTH2"]), false, false, false),
            None,
            "a stripped STARTTLS must not leak the token"
        );
        assert_eq!(
            choose_mechanism(&token_info(&[]), offer(&["XOAUTH2"]), false, false, true),
            None
        );
        assert_eq!(
            choose_mechanism(&token_info(&x), offer(&["XOAUTH2"]), false, false, true),
            Some(Mechanism::XOAuth2)
        );
    }

    #[test]
    fn plus_needs_channel_binding() {
        let offered = ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"];
        assert_eq!(
            choose_mechanism(&info(&[]), offer(&offered), true, false, false),
            Some(Mechanism::ScramSha256)
        );
        assert_eq!(
            choose_mechanism(&info(&[]), offer(&offered), true, true, false),
            Some(Mechanism::ScramSha256Plus)
        );
    }
}
