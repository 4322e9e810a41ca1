//! SCRAM server (RFC 5802, RFC 7677), with channel binding for the -PLUS variants
//! (RFC 5802 §6, RFC 9266 tls-exporter, RFC 5929 tls-server-end-point).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use subtle::ConstantTimeEq as _;

use super::{Failure, Flow, MAX_FIELD, SecretRequest, ServerConfig, ServerExchange, State, Step};
use crate::binding::ChannelBindingType;
use crate::mechanism::SecretFamily;
use crate::scram::{
    ScramHash, attr, is_valid_cb_name, is_valid_nonce, random_nonce, unescape_saslname,
};
use crate::secret::{StoredSecret, dummy_secret};

#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub(super) enum ScramState {
    AwaitClientFirst,
    /// NeedSecret #1: salt and iteration count for server-first.
    FirstSecret(Box<Session>),
    AwaitClientFinal(Box<Session>),
    /// NeedSecret #2: StoredKey and ServerKey to check the proof.
    FinalSecret(Box<Session>, ClientFinal),
}

impl ScramState {
    pub(super) fn phase(&self) -> &'static str {
        match self {
            ScramState::AwaitClientFirst => "awaiting client-first",
            ScramState::FirstSecret(_) | ScramState::FinalSecret(..) => "awaiting secret",
            ScramState::AwaitClientFinal(_) => "awaiting client-final",
        }
    }
}

/// Everything about the exchange that is public on the wire; no key material.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct Session {
    gs2_header: String,
    channel_binding: Option<ChannelBindingType>,
    client_first_bare: String,
    authcid: String,
    authzid: Option<String>,
    /// Client nonce followed by ours.
    nonce: String,
    server_first: String,
    /// The user was unknown at the first fetch: fail at the end whatever happens, even if
    /// the second fetch finds a user created in between.
    unknown_user: bool,
}

#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct ClientFinal {
    without_proof: String,
    proof: Vec<u8>,
}

fn family_of(ex: &ServerExchange) -> (SecretFamily, ScramHash) {
    match ScramHash::for_mechanism(ex.mechanism) {
        Some(ScramHash::Sha1) => (SecretFamily::ScramSha1, ScramHash::Sha1),
        _ => (SecretFamily::ScramSha256, ScramHash::Sha256),
    }
}

pub(super) fn start(ex: &mut ServerExchange, cfg: &ServerConfig, initial: Option<&[u8]>) -> Flow {
    if ex.mechanism.needs_channel_binding() && cfg.channel_bindings.is_empty() {
        return Err(Failure::Unavailable("channel binding needs TLS"));
    }
    match initial {
        Some(client_first) => client_first_message(ex, cfg, client_first),
        None => {
            ex.state = State::Scram(ScramState::AwaitClientFirst);
            Ok(Step::Challenge(Vec::new()))
        }
    }
}

pub(super) fn step(
    ex: &mut ServerExchange,
    cfg: &ServerConfig,
    state: ScramState,
    response: &[u8],
) -> Flow {
    match state {
        ScramState::AwaitClientFirst => client_first_message(ex, cfg, response),
        ScramState::AwaitClientFinal(session) => client_final_message(ex, cfg, session, response),
        ScramState::FirstSecret(_) | ScramState::FinalSecret(..) => {
            Err(Failure::Malformed("a secret is pending"))
        }
    }
}

pub(super) fn resume(
    ex: &mut ServerExchange,
    _cfg: &ServerConfig,
    state: ScramState,
    secret: Option<&StoredSecret>,
) -> Flow {
    match state {
        ScramState::FirstSecret(session) => server_first_message(ex, session, secret),
        ScramState::FinalSecret(session, client_final) => {
            verify_client_final(ex, *session, client_final, secret)
        }
        _ => Err(Failure::Malformed("no secret was requested")),
    }
}

enum CbFlag<'a> {
    /// `n`: the client does not support channel binding.
    No,
    /// `y`: the client supports it but thinks the server does not.
    ClientOnly,
    /// `p=name`: the client binds to `name`.
    Bound(&'a str),
}

/// RFC 5802 §7 client-first-message = gs2-header client-first-message-bare.
fn client_first_message(ex: &mut ServerExchange, cfg: &ServerConfig, message: &[u8]) -> Flow {
    let text = std::str::from_utf8(message)
        .map_err(|_| Failure::Malformed("client-first is not valid UTF-8"))?;
    let (flag, rest) = text
        .split_once(',')
        .ok_or(Failure::Malformed("missing gs2 header"))?;
    let (authzid, bare) = rest
        .split_once(',')
        .ok_or(Failure::Malformed("missing gs2 header"))?;
    let gs2_header = &text[..flag.len() + authzid.len() + 2];

    let flag = match flag {
        "n" => CbFlag::No,
        "y" => CbFlag::ClientOnly,
        _ => match attr(flag, 'p') {
            Some(name) if is_valid_cb_name(name) => CbFlag::Bound(name),
            _ => return Err(Failure::Malformed("bad gs2 channel binding flag")),
        },
    };
    let authzid = match authzid {
        "" => None,
        a => {
            let value = attr(a, 'a').ok_or(Failure::Malformed("bad gs2 authzid"))?;
            let decoded = unescape_saslname(value).map_err(Failure::Malformed)?;
            if decoded.is_empty() {
                return Err(Failure::Malformed("empty authzid"));
            }
            Some(decoded)
        }
    };

    let mut attrs = bare.split(',');
    let first = attrs.next().unwrap_or("");
    // RFC 5802 §5.1: "m" marks a mandatory extension; we know none, so we MUST fail.
    if attr(first, 'm').is_some() {
        return Err(Failure::Malformed("unsupported mandatory extension"));
    }
    let username = attr(first, 'n').ok_or(Failure::Malformed("missing username"))?;
    let username = unescape_saslname(username).map_err(Failure::Malformed)?;
    if username.is_empty() {
        return Err(Failure::Malformed("empty username"));
    }
    if username.len() > MAX_FIELD || authzid.as_ref().is_some_and(|a| a.len() > MAX_FIELD) {
        return Err(Failure::Malformed("field too long"));
    }
    let client_nonce = attrs
        .next()
        .and_then(|a| attr(a, 'r'))
        .ok_or(Failure::Malformed("missing nonce"))?;
    if !is_valid_nonce(client_nonce) {
        return Err(Failure::Malformed("bad nonce"));
    }
    check_extensions(attrs)?;

    let channel_binding = channel_binding_policy(ex, cfg, flag)?;

    let server_nonce = ex.fixed_nonce.clone().unwrap_or_else(random_nonce);
    let (family, _) = family_of(ex);
    let session = Session {
        gs2_header: gs2_header.to_owned(),
        channel_binding,
        client_first_bare: bare.to_owned(),
        authcid: username.clone(),
        authzid,
        nonce: format!("{client_nonce}{server_nonce}"),
        server_first: String::new(),
        unknown_user: false,
    };
    ex.state = State::Scram(ScramState::FirstSecret(Box::new(session)));
    Ok(Step::NeedSecret(SecretRequest {
        authcid: username,
        realm: None,
        family,
    }))
}

/// Extensions after the nonce are allowed and ignored (RFC 5802 §7 `extensions`), but must
/// at least look like `x=value`.
fn check_extensions<'a>(attrs: impl Iterator<Item = &'a str>) -> Result<(), Failure> {
    for ext in attrs {
        let mut chars = ext.chars();
        let well_formed =
            chars.next().is_some_and(|c| c.is_ascii_alphabetic()) && chars.next() == Some('=');
        if !well_formed {
            return Err(Failure::Malformed("bad attribute"));
        }
    }
    Ok(())
}

/// RFC 5802 §6: decides whether the gs2 flag is acceptable for this mechanism on this
/// connection, and which binding the client-final `c=` must carry.
fn channel_binding_policy(
    ex: &ServerExchange,
    cfg: &ServerConfig,
    flag: CbFlag<'_>,
) -> Result<Option<ChannelBindingType>, Failure> {
    if ex.mechanism.needs_channel_binding() {
        let CbFlag::Bound(name) = flag else {
            return Err(Failure::ChannelBinding(
                "-PLUS mechanism without channel binding",
            ));
        };
        let kind = ChannelBindingType::from_name(name)
            .filter(|kind| cfg.channel_binding(*kind).is_some())
            .ok_or(Failure::ChannelBinding("unsupported channel binding type"))?;
        return Ok(Some(kind));
    }
    match flag {
        CbFlag::No => Ok(None),
        // The client could bind but believes we cannot. We did offer -PLUS, so someone
        // stripped it from the EHLO reply on the way: a downgrade attack.
        CbFlag::ClientOnly if cfg.plus_advertised && !cfg.channel_bindings.is_empty() => Err(
            Failure::ChannelBinding("client believes the server cannot bind: downgrade"),
        ),
        CbFlag::ClientOnly => Ok(None),
        // Binding is only negotiated through the -PLUS mechanism names.
        CbFlag::Bound(_) => Err(Failure::ChannelBinding(
            "channel binding requested on a non-PLUS mechanism",
        )),
    }
}

/// `r=nonce,s=salt,i=iterations` (RFC 5802 §7 server-first-message).
fn server_first_message(
    ex: &mut ServerExchange,
    mut session: Box<Session>,
    secret: Option<&StoredSecret>,
) -> Flow {
    let (family, _) = family_of(ex);
    let dummy;
    let (salt, iterations) = match (family, secret) {
        (
            SecretFamily::ScramSha1,
            Some(StoredSecret::ScramSha1 {
                salt, iterations, ..
            }),
        )
        | (
            SecretFamily::ScramSha256,
            Some(StoredSecret::ScramSha256 {
                salt, iterations, ..
            }),
        ) => (salt, *iterations),
        (_, Some(_)) => return Err(Failure::InvalidCredentials),
        (_, None) => {
            // An unknown user gets a salt that is stable per name, as a real user's is, so
            // probing twice does not reveal that the user does not exist.
            session.unknown_user = true;
            dummy = dummy_secret(family, &session.authcid);
            match &dummy {
                StoredSecret::ScramSha1 {
                    salt, iterations, ..
                }
                | StoredSecret::ScramSha256 {
                    salt, iterations, ..
                } => (salt, *iterations),
                _ => return Err(Failure::InvalidCredentials),
            }
        }
    };
    if iterations == 0 || salt.is_empty() {
        return Err(Failure::InvalidCredentials);
    }
    session.server_first = format!("r={},s={},i={iterations}", session.nonce, B64.encode(salt));
    let challenge = session.server_first.clone().into_bytes();
    ex.state = State::Scram(ScramState::AwaitClientFinal(session));
    Ok(Step::Challenge(challenge))
}

/// RFC 5802 §7 client-final-message = client-final-message-without-proof "," proof.
fn client_final_message(
    ex: &mut ServerExchange,
    cfg: &ServerConfig,
    session: Box<Session>,
    message: &[u8],
) -> Flow {
    let (_, hash) = family_of(ex);
    let text = std::str::from_utf8(message)
        .map_err(|_| Failure::Malformed("client-final is not valid UTF-8"))?;
    let (without_proof, proof) = text
        .rsplit_once(",p=")
        .ok_or(Failure::Malformed("missing proof"))?;
    let mut attrs = without_proof.split(',');
    let cbind = attrs
        .next()
        .and_then(|a| attr(a, 'c'))
        .ok_or(Failure::Malformed("missing channel binding"))?;
    let nonce = attrs
        .next()
        .and_then(|a| attr(a, 'r'))
        .ok_or(Failure::Malformed("missing nonce"))?;
    check_extensions(attrs)?;
    let proof = B64
        .decode(proof)
        .map_err(|_| Failure::Malformed("proof is not base64"))?;
    if proof.len() != hash.output_len() {
        return Err(Failure::Malformed("proof has the wrong length"));
    }
    let cbind = B64
        .decode(cbind)
        .map_err(|_| Failure::Malformed("channel binding is not base64"))?;

    // c= repeats the gs2 header, so a header altered in transit (say "n" for "y") is caught,
    // followed for -PLUS by this TLS session's binding data, which a man in the middle
    // running two TLS sessions cannot reproduce.
    let mut expected = session.gs2_header.as_bytes().to_vec();
    if let Some(kind) = session.channel_binding {
        let binding = cfg.channel_binding(kind).ok_or(Failure::ChannelBinding(
            "channel binding no longer available",
        ))?;
        expected.extend_from_slice(&binding.data);
    }
    if !bool::from(cbind.ct_eq(&expected)) {
        return Err(Failure::ChannelBinding("channel binding data mismatch"));
    }
    // The combined nonce must be the one we issued, or this is a replayed client-final.
    if !bool::from(nonce.as_bytes().ct_eq(session.nonce.as_bytes())) {
        return Err(Failure::InvalidCredentials);
    }
    let (family, _) = family_of(ex);
    let request = SecretRequest {
        authcid: session.authcid.clone(),
        realm: None,
        family,
    };
    let client_final = ClientFinal {
        without_proof: without_proof.to_owned(),
        proof,
    };
    ex.state = State::Scram(ScramState::FinalSecret(session, client_final));
    Ok(Step::NeedSecret(request))
}

fn verify_client_final(
    ex: &mut ServerExchange,
    session: Session,
    client_final: ClientFinal,
    secret: Option<&StoredSecret>,
) -> Flow {
    let (family, hash) = family_of(ex);
    let dummy;
    let (stored_key, server_key): (&[u8], &[u8]) = match (family, secret) {
        (
            SecretFamily::ScramSha1,
            Some(StoredSecret::ScramSha1 {
                stored_key,
                server_key,
                ..
            }),
        ) => (stored_key, server_key),
        (
            SecretFamily::ScramSha256,
            Some(StoredSecret::ScramSha256 {
                stored_key,
                server_key,
                ..
            }),
        ) => (stored_key, server_key),
        (_, Some(_)) => return Err(Failure::InvalidCredentials),
        (_, None) => {
            dummy = dummy_secret(family, &session.authcid);
            match &dummy {
                StoredSecret::ScramSha1 {
                    stored_key,
                    server_key,
                    ..
                } => (stored_key, server_key),
                StoredSecret::ScramSha256 {
                    stored_key,
                    server_key,
                    ..
                } => (stored_key, server_key),
                _ => return Err(Failure::InvalidCredentials),
            }
        }
    };
    let auth_message = format!(
        "{},{},{}",
        session.client_first_bare, session.server_first, client_final.without_proof
    );
    let (valid, server_signature) = hash.verify_proof(
        stored_key,
        server_key,
        auth_message.as_bytes(),
        &client_final.proof,
    );
    if !(valid && secret.is_some() && !session.unknown_user) {
        return Err(Failure::InvalidCredentials);
    }
    let verifier = format!("v={}", B64.encode(server_signature));
    Ok(ex.success(
        session.authcid,
        None,
        session.authzid,
        Some(verifier.into_bytes()),
    ))
}
