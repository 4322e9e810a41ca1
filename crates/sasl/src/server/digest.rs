//! DIGEST-MD5 server (RFC 2831), qop=auth only: no security layer.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rand::RngCore as _;
use subtle::ConstantTimeEq as _;

use super::{Failure, Flow, SecretRequest, ServerConfig, ServerExchange, State, Step};
use crate::digest::{DigestInputs, DigestKind, parse_directives, quote, response_value};
use crate::mechanism::SecretFamily;
use crate::secret::{StoredSecret, dummy_secret};

/// RFC 2831 §2.1.2: "The size of a digest-response is less than 4096 bytes."
const MAX_DIGEST_RESPONSE: usize = 4096;

#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub(super) enum DigestState {
    AwaitResponse { nonce: String },
    AwaitSecret(Box<DigestResponse>),
}

impl DigestState {
    pub(super) fn phase(&self) -> &'static str {
        match self {
            DigestState::AwaitResponse { .. } => "awaiting digest-response",
            DigestState::AwaitSecret(_) => "awaiting secret",
        }
    }
}

/// A syntactically valid digest-response, waiting for the secret to check it against.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct DigestResponse {
    /// The user name to look up: `username` as sent, or its NAME when it was
    /// `NAME@REALM` in the response's own realm (`qualified`).
    username: String,
    realm: String,
    /// The client hashed `NAME@REALM`: check against the qualified HA1.
    #[serde(default)]
    qualified: bool,
    /// The client hashed `NAME@REALM` with another realm the server offered
    /// (this one): check against that stored HA1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hashed_in: Option<String>,
    nonce: String,
    cnonce: String,
    nc: String,
    digest_uri: String,
    authzid: Option<String>,
    response: String,
}

pub(super) fn start(ex: &mut ServerExchange, cfg: &ServerConfig) -> Flow {
    let nonce = match &ex.fixed_nonce {
        Some(fixed) => fixed.clone(),
        None => {
            // RFC 2831 §2.1.1 wants the nonce unpredictable; 24 bytes is well above the
            // 64 bits it asks for.
            let mut bytes = [0u8; 24];
            // ThreadRng: a CSPRNG without a getrandom(2) call per AUTH.
            rand::thread_rng().fill_bytes(&mut bytes);
            B64.encode(bytes)
        }
    };
    let mut challenge: Vec<String> = cfg
        .realms
        .iter()
        .map(|realm| format!("realm={}", quote(realm)))
        .collect();
    challenge.push(format!("nonce={}", quote(&nonce)));
    challenge.push("qop=\"auth\"".to_owned());
    challenge.push("charset=utf-8".to_owned());
    challenge.push("algorithm=md5-sess".to_owned());
    ex.digest_nonce = Some(nonce.clone());
    ex.state = State::Digest(DigestState::AwaitResponse { nonce });
    Ok(Step::Challenge(challenge.join(",").into_bytes()))
}

pub(super) fn step(
    ex: &mut ServerExchange,
    cfg: &ServerConfig,
    state: DigestState,
    response: &[u8],
) -> Flow {
    let DigestState::AwaitResponse { nonce } = state else {
        return Err(Failure::Malformed("a secret is pending"));
    };
    let mut parsed = parse_response(cfg, &nonce, response)?;
    // A client where people log in with their address sends
    // `username="test@mailserver.foo.com"` and `realm="mailserver.foo.com"`:
    // that is the user `test` of that realm, hashed in its qualified form.
    // (A stored user name never contains '@', so this reads no one else.)
    //
    // Most clients hash that address with the first realm the challenge
    // offered, which on a default set-up is the host name: that is still
    // the user `test` of `mailserver.foo.com`, checked against the HA1 of
    // the address in the offered realm, kept for each offered realm (the
    // way Cyrus accepts it, computing from its clear-text sasldb).
    let split = parsed
        .username
        .rsplit_once('@')
        .filter(|(n, r)| !n.is_empty() && !r.is_empty())
        .map(|(n, r)| (n.to_owned(), r.to_owned()));
    if let Some((name, user_realm)) = split {
        if user_realm == parsed.realm {
            parsed.qualified = true;
        } else if cfg.realms.contains(&parsed.realm) {
            parsed.hashed_in = Some(std::mem::replace(&mut parsed.realm, user_realm));
            parsed.qualified = true;
        }
        if parsed.qualified {
            parsed.username = name;
        }
    }
    let request = SecretRequest {
        authcid: parsed.username.clone(),
        realm: Some(parsed.realm.clone()),
        family: SecretFamily::DigestMd5,
    };
    ex.state = State::Digest(DigestState::AwaitSecret(Box::new(parsed)));
    Ok(Step::NeedSecret(request))
}

fn parse_response(
    cfg: &ServerConfig,
    our_nonce: &str,
    response: &[u8],
) -> Result<DigestResponse, Failure> {
    if response.len() > MAX_DIGEST_RESPONSE {
        return Err(Failure::Malformed("digest-response too long"));
    }
    let text = std::str::from_utf8(response)
        .map_err(|_| Failure::Malformed("digest-response is not valid UTF-8"))?;
    let directives = parse_directives(text).map_err(Failure::Malformed)?;
    for (i, (name, _)) in directives.iter().enumerate() {
        // RFC 2831 §2.1.2: each directive appears at most once; a second copy could be read
        // differently by a proxy and by us.
        if directives[..i].iter().any(|(earlier, _)| earlier == name) {
            return Err(Failure::Malformed("duplicated directive"));
        }
    }
    let get = |name: &str| {
        directives
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let username = get("username").ok_or(Failure::Malformed("missing username"))?;
    let nonce = get("nonce").ok_or(Failure::Malformed("missing nonce"))?;
    let cnonce = get("cnonce").ok_or(Failure::Malformed("missing cnonce"))?;
    let nc = get("nc").ok_or(Failure::Malformed("missing nc"))?;
    let digest_uri = get("digest-uri").ok_or(Failure::Malformed("missing digest-uri"))?;
    let client_response = get("response").ok_or(Failure::Malformed("missing response"))?;

    if username.is_empty() {
        return Err(Failure::Malformed("empty username"));
    }
    if cnonce.is_empty() {
        return Err(Failure::Malformed("empty cnonce"));
    }
    if let Some(charset) = get("charset")
        && !charset.eq_ignore_ascii_case("utf-8")
    {
        return Err(Failure::Malformed("charset must be utf-8"));
    }
    // We offer qop="auth" only: no integrity or confidentiality layer.
    if let Some(qop) = get("qop")
        && qop != "auth"
    {
        return Err(Failure::Malformed("unsupported qop"));
    }
    // Each nonce is used once (RFC 2831 §2.1.2 nonce-count): a later count would be a
    // subsequent authentication, which we do not support.
    if nc != "00000001" {
        return Err(Failure::Malformed("nc must be 00000001"));
    }
    if client_response.len() != 32 || !client_response.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Failure::Malformed("response is not 32 hex digits"));
    }
    // A response computed for another exchange's nonce is a replay.
    if !bool::from(nonce.as_bytes().ct_eq(our_nonce.as_bytes())) {
        return Err(Failure::InvalidCredentials);
    }
    // RFC 2831 §2.1.2 digest-uri: serv-type "/" host ["/" serv-name]. Checking the service
    // stops a response captured by, say, an IMAP server being replayed to us; the host is
    // whatever name the client dialled, so any is accepted.
    let service = digest_uri
        .split_once('/')
        .map(|(service, _)| service)
        .ok_or(Failure::Malformed("digest-uri needs serv-type/host"))?;
    if !service.eq_ignore_ascii_case(cfg.service()) {
        return Err(Failure::InvalidCredentials);
    }
    let realm = match get("realm") {
        Some(realm) => realm.to_owned(),
        None => cfg.realms.first().cloned().unwrap_or_default(),
    };
    Ok(DigestResponse {
        username: username.to_owned(),
        realm,
        qualified: false,
        hashed_in: None,
        nonce: nonce.to_owned(),
        cnonce: cnonce.to_owned(),
        nc: nc.to_owned(),
        digest_uri: digest_uri.to_owned(),
        authzid: get("authzid").filter(|a| !a.is_empty()).map(str::to_owned),
        response: client_response.to_ascii_lowercase(),
    })
}

pub(super) fn resume(
    ex: &mut ServerExchange,
    _cfg: &ServerConfig,
    state: DigestState,
    secret: Option<&StoredSecret>,
) -> Flow {
    let DigestState::AwaitSecret(r) = state else {
        return Err(Failure::Malformed("no secret was requested"));
    };
    let pick = |s: &StoredSecret| match (s, &r.hashed_in) {
        (StoredSecret::DigestMd5 { ha1_offered, .. }, Some(offered)) => ha1_offered
            .iter()
            .find(|(realm, _)| realm == offered)
            .map(|(_, h)| *h),
        (StoredSecret::DigestMd5 { ha1, .. }, None) if !r.qualified => Some(*ha1),
        (StoredSecret::DigestMd5 { ha1_qualified, .. }, None) => *ha1_qualified,
        _ => None,
    };
    // No user, or no hash of the form the client used (an imported bare
    // HA1 has no qualified twin; a realm offered only after the password
    // was set): check against a dummy anyway, so the answer takes as
    // long, and refuse.
    let found = secret.and_then(pick);
    let ha1 = found.unwrap_or_else(
        || match dummy_secret(SecretFamily::DigestMd5, &r.username) {
            StoredSecret::DigestMd5 { ha1, .. } => ha1,
            _ => [0; 16],
        },
    );
    let inputs = DigestInputs {
        nonce: &r.nonce,
        cnonce: &r.cnonce,
        nc: &r.nc,
        qop: "auth",
        digest_uri: &r.digest_uri,
        authzid: r.authzid.as_deref(),
    };
    let expected = response_value(&ha1, &inputs, DigestKind::Response);
    let matches = bool::from(expected.as_bytes().ct_eq(r.response.as_bytes()));
    if !(matches && found.is_some()) {
        return Err(Failure::InvalidCredentials);
    }
    let rspauth = response_value(&ha1, &inputs, DigestKind::RspAuth);
    let DigestResponse {
        username,
        realm,
        authzid,
        ..
    } = *r;
    Ok(ex.success(
        username,
        Some(realm),
        authzid,
        Some(format!("rspauth={rspauth}").into_bytes()),
    ))
}
