//! The client side of every mechanism: used by the relay to authenticate to a next hop, and
//! by the load tool to authenticate to us.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use rand::RngCore as _;
use sha2::Sha256;
use subtle::ConstantTimeEq as _;

use crate::binding::ChannelBinding;
use crate::digest::{
    DigestInputs, DigestKind, parse_directives, quote, response_value, user_realm_password_hash,
};
use crate::md5ctx::hmac_md5_contexts;
use crate::mechanism::Mechanism;
use crate::oauth::{DUMMY_RESPONSE, ErrorStatus, oauthbearer_message, xoauth2_message};
use crate::scram::{ScramHash, attr, escape_saslname, is_valid_nonce};

/// A server may make us spend at most this many PBKDF2 iterations; more is a denial of
/// service against the relay, not a security setting.
const MAX_SCRAM_ITERATIONS: u32 = 10_000_000;
/// Challenges larger than this are not from a real server (RFC 2831 §2.1.1 caps DIGEST-MD5's
/// at 2048 bytes; the others are far smaller).
const MAX_CHALLENGE: usize = 8192;

/// Who we are towards a server.
#[derive(Clone)]
pub struct ClientCredentials {
    pub authcid: String,
    pub authzid: Option<String>,
    /// The password; for OAUTHBEARER and XOAUTH2, the bearer token.
    pub password: String,
    /// DIGEST-MD5 realm; the server's first offered realm when `None`.
    pub realm: Option<String>,
    /// DIGEST-MD5 digest-uri service; `"smtp"` when empty.
    pub service: String,
    /// Server host name for the DIGEST-MD5 digest-uri.
    pub host: String,
    /// This TLS session's binding, for the -PLUS mechanisms.
    pub channel_binding: Option<ChannelBinding>,
}

impl ClientCredentials {
    /// Credentials for `authcid` with everything else defaulted (service `smtp`).
    pub fn new(authcid: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            authcid: authcid.into(),
            authzid: None,
            password: password.into(),
            realm: None,
            service: "smtp".to_owned(),
            host: String::new(),
            channel_binding: None,
        }
    }

    fn service(&self) -> &str {
        if self.service.is_empty() {
            "smtp"
        } else {
            &self.service
        }
    }

    fn host(&self) -> &str {
        if self.host.is_empty() {
            "localhost"
        } else {
            &self.host
        }
    }
}

/// Redacts the password, so credentials can sit in a logged config struct.
impl fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("authcid", &self.authcid)
            .field("authzid", &self.authzid)
            .field("password", &"<redacted>")
            .field("realm", &self.realm)
            .field("service", &self.service)
            .field("host", &self.host)
            .field(
                "channel_binding",
                &self.channel_binding.as_ref().map(|b| b.kind),
            )
            .finish()
    }
}

/// What the client does after a challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientStep {
    /// Send these raw bytes (base64 is the SMTP layer's job).
    Respond(Vec<u8>),
    /// Nothing more to send; wait for the server's verdict.
    Done,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("mechanism not supported by this client or server")]
    Unsupported,
    #[error("malformed challenge: {0}")]
    MalformedChallenge(&'static str),
    /// The server could not prove it knows our secret (bad `rspauth` or `v=`): it may be an
    /// impostor, so the session must not go on.
    #[error("server failed to authenticate itself")]
    ServerAuthenticationFailed,
    #[error("channel binding unavailable")]
    ChannelBindingUnavailable,
    #[error("unusable credentials: {0}")]
    InvalidCredentials(&'static str),
    /// The server answered with a SCRAM `e=` error.
    #[error("server rejected the authentication")]
    Rejected,
    #[error("exchange already finished")]
    Finished,
}

/// One client-side SASL exchange.
pub struct ClientExchange {
    mechanism: Mechanism,
    creds: ClientCredentials,
    fixed_nonce: Option<String>,
    state: ClientState,
    /// The error an OAUTHBEARER/XOAUTH2 server sent instead of accepting the token.
    oauth_error: Option<ErrorStatus>,
}

enum ClientState {
    Initial,
    /// OAUTHBEARER/XOAUTH2 sent: the verdict follows, or an error challenge before it.
    BearerSent,
    /// Our last message is sent; only the verdict may follow.
    Sent,
    LoginAwaitPassword,
    DigestAwaitRspauth {
        expected: String,
    },
    ScramAwaitServerFirst {
        gs2_header: String,
        client_first_bare: String,
        nonce: String,
    },
    ScramAwaitServerFinal {
        server_signature: Vec<u8>,
    },
    Done,
}

impl fmt::Debug for ClientExchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientExchange")
            .field("mechanism", &self.mechanism)
            .field("creds", &self.creds)
            .finish_non_exhaustive()
    }
}

impl ClientExchange {
    pub fn new(mechanism: Mechanism, creds: ClientCredentials) -> Result<Self, ClientError> {
        if mechanism.needs_channel_binding() && creds.channel_binding.is_none() {
            return Err(ClientError::ChannelBindingUnavailable);
        }
        if mechanism != Mechanism::External && creds.authcid.is_empty() {
            return Err(ClientError::InvalidCredentials("empty authcid"));
        }
        // The token goes between kvseps as a b64token (RFC 6750 §2.1): anything else would
        // change the message's structure.
        let bad_token = mechanism.uses_bearer_token()
            && (creds.password.is_empty()
                || !creds
                    .password
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b)));
        if bad_token {
            return Err(ClientError::InvalidCredentials(
                "bearer token is not a b64token",
            ));
        }
        let bad_user = mechanism.uses_bearer_token()
            && [Some(creds.authcid.as_str()), creds.authzid.as_deref()]
                .into_iter()
                .flatten()
                .any(|u| u.chars().any(char::is_control));
        if bad_user {
            return Err(ClientError::InvalidCredentials(
                "control character in user name",
            ));
        }
        let has_nul = creds.authcid.contains('\0')
            || creds.password.contains('\0')
            || creds.authzid.as_deref().is_some_and(|a| a.contains('\0'));
        if has_nul {
            // RFC 4616 and RFC 5802 cannot carry NUL; refuse rather than send something else.
            return Err(ClientError::InvalidCredentials("NUL in credentials"));
        }
        Ok(Self {
            mechanism,
            creds,
            fixed_nonce: None,
            state: ClientState::Initial,
            oauth_error: None,
        })
    }

    /// A client whose nonce (SCRAM client nonce, DIGEST-MD5 cnonce) is fixed, for the RFC
    /// vector tests only.
    #[doc(hidden)]
    pub fn with_nonce(
        mechanism: Mechanism,
        creds: ClientCredentials,
        nonce: &str,
    ) -> Result<Self, ClientError> {
        let mut exchange = Self::new(mechanism, creds)?;
        exchange.fixed_nonce = Some(nonce.to_owned());
        Ok(exchange)
    }

    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// The RFC 7628 §3.2.2 error an OAUTHBEARER or XOAUTH2 server answered the token with
    /// (e.g. `invalid_token`: fetch a new token and try again); `None` before one arrives or
    /// when the challenge was not that JSON.
    pub fn oauth_error(&self) -> Option<&ErrorStatus> {
        self.oauth_error.as_ref()
    }

    /// Whether nothing more is expected from the server (success already verified).
    pub fn is_finished(&self) -> bool {
        matches!(self.state, ClientState::Done)
    }

    /// The message to put on the AUTH line, for client-first mechanisms (PLAIN, SCRAM,
    /// EXTERNAL); `None` for the others or once it has been produced.
    pub fn initial_response(&mut self) -> Option<Vec<u8>> {
        if self.mechanism.has_initial_response() && matches!(self.state, ClientState::Initial) {
            Some(self.first_message())
        } else {
            None
        }
    }

    /// Answers a 334 challenge (decoded). This also takes the final `rspauth=`/`v=`
    /// challenge, verifies it, and answers with an empty response (RFC 4954 §4).
    pub fn step(&mut self, challenge: &[u8]) -> Result<ClientStep, ClientError> {
        if challenge.len() > MAX_CHALLENGE {
            self.state = ClientState::Done;
            return Err(ClientError::MalformedChallenge("challenge too long"));
        }
        let state = std::mem::replace(&mut self.state, ClientState::Done);
        let result = match state {
            ClientState::Initial => match self.mechanism {
                Mechanism::Plain
                | Mechanism::External
                | Mechanism::ScramSha1
                | Mechanism::ScramSha1Plus
                | Mechanism::ScramSha256
                | Mechanism::ScramSha256Plus
                | Mechanism::OAuthBearer
                | Mechanism::XOAuth2 => Ok(ClientStep::Respond(self.first_message())),
                Mechanism::Login => {
                    self.state = ClientState::LoginAwaitPassword;
                    Ok(ClientStep::Respond(self.creds.authcid.as_bytes().to_vec()))
                }
                Mechanism::CramMd5 => self.cram_md5(challenge),
                Mechanism::DigestMd5 => self.digest_md5(challenge),
            },
            ClientState::LoginAwaitPassword => {
                self.state = ClientState::Sent;
                Ok(ClientStep::Respond(self.creds.password.as_bytes().to_vec()))
            }
            ClientState::ScramAwaitServerFirst {
                gs2_header,
                client_first_bare,
                nonce,
            } => self.scram_client_final(&gs2_header, &client_first_bare, &nonce, challenge),
            ClientState::DigestAwaitRspauth { expected } => {
                verify_rspauth(&expected, challenge).map(|()| ClientStep::Respond(Vec::new()))
            }
            ClientState::ScramAwaitServerFinal { server_signature } => {
                verify_server_final(&server_signature, challenge)
                    .map(|()| ClientStep::Respond(Vec::new()))
            }
            ClientState::BearerSent => {
                // RFC 7628 §3.2.3: the server refused the token and says why; answer with
                // the dummy response and the server ends with its failure reply. XOAUTH2
                // clients answer with an empty response (Google's documentation).
                self.oauth_error = ErrorStatus::from_json(challenge).ok();
                self.state = ClientState::Sent;
                Ok(ClientStep::Respond(match self.mechanism {
                    Mechanism::XOAuth2 => Vec::new(),
                    _ => DUMMY_RESPONSE.to_vec(),
                }))
            }
            ClientState::Sent => Err(ClientError::MalformedChallenge("unexpected challenge")),
            ClientState::Done => Err(ClientError::Finished),
        };
        if result.is_err() {
            self.state = ClientState::Done;
        }
        result
    }

    /// Verifies `rspauth=`/`v=` when the server sends it with its success reply rather than
    /// as a last challenge. For mechanisms without such data, only empty data is accepted.
    pub fn verify_final(&mut self, additional: &[u8]) -> Result<(), ClientError> {
        let state = std::mem::replace(&mut self.state, ClientState::Done);
        match state {
            ClientState::DigestAwaitRspauth { expected } => verify_rspauth(&expected, additional),
            ClientState::ScramAwaitServerFinal { server_signature } => {
                verify_server_final(&server_signature, additional)
            }
            ClientState::Done => Err(ClientError::Finished),
            ClientState::Sent | ClientState::BearerSent if additional.is_empty() => Ok(()),
            _ => Err(ClientError::MalformedChallenge(
                "unexpected additional data",
            )),
        }
    }

    /// A fresh nonce of `bytes` random bytes, base64 (so free of `,` and `"`).
    fn nonce(&self, bytes: usize) -> String {
        self.fixed_nonce.clone().unwrap_or_else(|| {
            let mut raw = vec![0u8; bytes];
            rand::rngs::OsRng.fill_bytes(&mut raw);
            B64.encode(raw)
        })
    }

    fn first_message(&mut self) -> Vec<u8> {
        match self.mechanism {
            Mechanism::Plain => {
                self.state = ClientState::Sent;
                // RFC 4616 §2: [authzid] NUL authcid NUL passwd.
                let mut message = Vec::new();
                message.extend_from_slice(self.creds.authzid.as_deref().unwrap_or("").as_bytes());
                message.push(0);
                message.extend_from_slice(self.creds.authcid.as_bytes());
                message.push(0);
                message.extend_from_slice(self.creds.password.as_bytes());
                message
            }
            Mechanism::External => {
                self.state = ClientState::Sent;
                self.creds.authzid.clone().unwrap_or_default().into_bytes()
            }
            Mechanism::OAuthBearer => {
                self.state = ClientState::BearerSent;
                // Servers (Gmail, Microsoft 365, ours) want to know whose token it is: the
                // authzid, else the user.
                let user = self.creds.authzid.as_deref().unwrap_or(&self.creds.authcid);
                let host = Some(self.creds.host.as_str()).filter(|h| !h.is_empty());
                oauthbearer_message(Some(user), host, None, &self.creds.password)
            }
            Mechanism::XOAuth2 => {
                self.state = ClientState::BearerSent;
                xoauth2_message(&self.creds.authcid, &self.creds.password)
            }
            _ => self.scram_client_first(),
        }
    }

    /// RFC 2195 §2: `user SP hex(HMAC-MD5(password, challenge))`.
    fn cram_md5(&mut self, challenge: &[u8]) -> Result<ClientStep, ClientError> {
        if challenge.is_empty() {
            return Err(ClientError::MalformedChallenge("empty CRAM-MD5 challenge"));
        }
        let (inner, outer) = hmac_md5_contexts(self.creds.password.as_bytes());
        let digest = crate::md5ctx::hmac_md5_from_contexts(&inner, &outer, challenge);
        self.state = ClientState::Sent;
        Ok(ClientStep::Respond(
            format!("{} {}", self.creds.authcid, hex::encode(digest)).into_bytes(),
        ))
    }

    /// RFC 2831 §2.1.2 digest-response, qop=auth.
    fn digest_md5(&mut self, challenge: &[u8]) -> Result<ClientStep, ClientError> {
        let text = std::str::from_utf8(challenge)
            .map_err(|_| ClientError::MalformedChallenge("challenge is not valid UTF-8"))?;
        let directives = parse_directives(text).map_err(ClientError::MalformedChallenge)?;
        let mut realms = Vec::new();
        let (mut nonce, mut qop, mut charset, mut algorithm) = (None, None, None, None);
        for (name, value) in &directives {
            let slot = match name.as_str() {
                "realm" => {
                    realms.push(value.as_str());
                    continue;
                }
                "nonce" => &mut nonce,
                "qop" => &mut qop,
                "charset" => &mut charset,
                "algorithm" => &mut algorithm,
                "rspauth" => {
                    return Err(ClientError::MalformedChallenge("rspauth before response"));
                }
                _ => continue,
            };
            // RFC 2831 §2.1.1: these appear at most once; two copies is an attempt to make
            // us and the server read different values.
            if slot.replace(value.as_str()).is_some() {
                return Err(ClientError::MalformedChallenge("duplicated directive"));
            }
        }
        let nonce = nonce.ok_or(ClientError::MalformedChallenge("missing nonce"))?;
        if algorithm != Some("md5-sess") {
            return Err(ClientError::MalformedChallenge(
                "algorithm must be md5-sess",
            ));
        }
        let offers_auth = qop.is_none_or(|q| q.split(',').any(|o| o.trim() == "auth"));
        if !offers_auth {
            return Err(ClientError::Unsupported);
        }
        let utf8 = match charset {
            None => false,
            Some(c) if c.eq_ignore_ascii_case("utf-8") => true,
            Some(_) => return Err(ClientError::MalformedChallenge("charset must be utf-8")),
        };
        let realm = self
            .creds
            .realm
            .clone()
            .or_else(|| realms.first().map(|r| (*r).to_owned()));
        let cnonce = self.nonce(16);
        let digest_uri = format!("{}/{}", self.creds.service(), self.creds.host());
        let ha1 = user_realm_password_hash(
            &self.creds.authcid,
            realm.as_deref().unwrap_or(""),
            self.creds.password.as_bytes(),
        );
        let authzid = self.creds.authzid.as_deref().filter(|a| !a.is_empty());
        let inputs = DigestInputs {
            nonce,
            cnonce: &cnonce,
            nc: "00000001",
            qop: "auth",
            digest_uri: &digest_uri,
            authzid,
        };
        let response = response_value(&ha1, &inputs, DigestKind::Response);
        let expected = response_value(&ha1, &inputs, DigestKind::RspAuth);

        let mut out = Vec::new();
        if utf8 {
            out.push("charset=utf-8".to_owned());
        }
        out.push(format!("username={}", quote(&self.creds.authcid)));
        if let Some(realm) = &realm {
            out.push(format!("realm={}", quote(realm)));
        }
        out.push(format!("nonce={}", quote(nonce)));
        out.push("nc=00000001".to_owned());
        out.push(format!("cnonce={}", quote(&cnonce)));
        out.push(format!("digest-uri={}", quote(&digest_uri)));
        out.push(format!("response={response}"));
        out.push("qop=auth".to_owned());
        if let Some(authzid) = authzid {
            out.push(format!("authzid={}", quote(authzid)));
        }
        self.state = ClientState::DigestAwaitRspauth { expected };
        Ok(ClientStep::Respond(out.join(",").into_bytes()))
    }

    /// RFC 5802 §7 client-first-message.
    fn scram_client_first(&mut self) -> Vec<u8> {
        let flag = match (
            &self.creds.channel_binding,
            self.mechanism.needs_channel_binding(),
        ) {
            (Some(binding), true) => format!("p={}", binding.kind.name()),
            // We could bind, but the server did not offer -PLUS (or it would have been
            // chosen): "y" lets a server that did offer it detect the downgrade (RFC 5802 §6).
            (Some(_), false) => "y".to_owned(),
            (None, _) => "n".to_owned(),
        };
        let authzid = match self.creds.authzid.as_deref().filter(|a| !a.is_empty()) {
            Some(a) => format!("a={}", escape_saslname(a)),
            None => String::new(),
        };
        let gs2_header = format!("{flag},{authzid},");
        let nonce = self.nonce(24);
        let client_first_bare = format!("n={},r={nonce}", escape_saslname(&self.creds.authcid));
        let message = format!("{gs2_header}{client_first_bare}").into_bytes();
        self.state = ClientState::ScramAwaitServerFirst {
            gs2_header,
            client_first_bare,
            nonce,
        };
        message
    }

    /// RFC 5802 §7 client-final-message, after checking server-first.
    fn scram_client_final(
        &mut self,
        gs2_header: &str,
        client_first_bare: &str,
        client_nonce: &str,
        challenge: &[u8],
    ) -> Result<ClientStep, ClientError> {
        let hash = ScramHash::for_mechanism(self.mechanism).ok_or(ClientError::Unsupported)?;
        let server_first = std::str::from_utf8(challenge)
            .map_err(|_| ClientError::MalformedChallenge("server-first is not valid UTF-8"))?;
        let mut attrs = server_first.split(',');
        let first = attrs.next().unwrap_or("");
        if attr(first, 'm').is_some() {
            return Err(ClientError::MalformedChallenge(
                "unsupported mandatory extension",
            ));
        }
        let nonce = attr(first, 'r').ok_or(ClientError::MalformedChallenge("missing nonce"))?;
        // The server must extend our nonce, not replace it: otherwise it could replay an old
        // exchange at us.
        if !nonce.starts_with(client_nonce) || nonce.len() == client_nonce.len() {
            return Err(ClientError::MalformedChallenge(
                "server nonce does not extend ours",
            ));
        }
        if !is_valid_nonce(nonce) {
            return Err(ClientError::MalformedChallenge("bad nonce"));
        }
        let salt = attrs
            .next()
            .and_then(|a| attr(a, 's'))
            .and_then(|s| B64.decode(s).ok())
            .filter(|s| !s.is_empty())
            .ok_or(ClientError::MalformedChallenge("missing or bad salt"))?;
        let iterations: u32 = attrs
            .next()
            .and_then(|a| attr(a, 'i'))
            .and_then(|i| i.parse().ok())
            .filter(|i| *i >= 1)
            .ok_or(ClientError::MalformedChallenge(
                "missing or bad iteration count",
            ))?;
        if iterations > MAX_SCRAM_ITERATIONS {
            return Err(ClientError::MalformedChallenge("iteration count too large"));
        }

        let mut cbind_input = gs2_header.as_bytes().to_vec();
        if self.mechanism.needs_channel_binding() {
            let binding = self
                .creds
                .channel_binding
                .as_ref()
                .ok_or(ClientError::ChannelBindingUnavailable)?;
            cbind_input.extend_from_slice(&binding.data);
        }
        let without_proof = format!("c={},r={nonce}", B64.encode(&cbind_input));
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let salted = salted_password(hash, self.creds.password.as_bytes(), &salt, iterations);
        let (proof, server_signature) = hash.client_proof(&salted, auth_message.as_bytes());
        self.state = ClientState::ScramAwaitServerFinal { server_signature };
        Ok(ClientStep::Respond(
            format!("{without_proof},p={}", B64.encode(proof)).into_bytes(),
        ))
    }
}

fn verify_rspauth(expected: &str, data: &[u8]) -> Result<(), ClientError> {
    let text = std::str::from_utf8(data).map_err(|_| ClientError::ServerAuthenticationFailed)?;
    let directives = parse_directives(text).map_err(|_| ClientError::ServerAuthenticationFailed)?;
    let mut rspauth = directives.iter().filter(|(n, _)| n == "rspauth");
    match (rspauth.next(), rspauth.next()) {
        (Some((_, value)), None)
            if bool::from(
                value
                    .to_ascii_lowercase()
                    .as_bytes()
                    .ct_eq(expected.as_bytes()),
            ) =>
        {
            Ok(())
        }
        _ => Err(ClientError::ServerAuthenticationFailed),
    }
}

/// RFC 5802 §7 server-final-message = (server-error / verifier) ["," extensions].
fn verify_server_final(expected: &[u8], data: &[u8]) -> Result<(), ClientError> {
    let text = std::str::from_utf8(data).map_err(|_| ClientError::ServerAuthenticationFailed)?;
    let first = text.split(',').next().unwrap_or("");
    if attr(first, 'e').is_some() {
        return Err(ClientError::Rejected);
    }
    let signature = attr(first, 'v')
        .and_then(|v| B64.decode(v).ok())
        .ok_or(ClientError::ServerAuthenticationFailed)?;
    if bool::from(signature.ct_eq(expected)) {
        Ok(())
    } else {
        Err(ClientError::ServerAuthenticationFailed)
    }
}

static SCRAM_CACHE_ENABLED: AtomicBool = AtomicBool::new(false);
const SCRAM_CACHE_ENTRIES: usize = 256;

type CacheKey = (bool, [u8; 32], Vec<u8>, u32);

fn scram_cache() -> &'static Mutex<HashMap<CacheKey, Vec<u8>>> {
    static CACHE: OnceLock<Mutex<HashMap<CacheKey, Vec<u8>>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Turns on (or off, clearing it) a process-wide cache of SCRAM SaltedPassword values, keyed
/// by (password MAC, salt, iterations). RFC 5802 §5.1 lets clients cache it, since it changes
/// only with the salt; it saves the load tool thousands of PBKDF2 runs per second. Off by
/// default: it keeps password-equivalent material in memory.
pub fn set_scram_cache(enabled: bool) {
    SCRAM_CACHE_ENABLED.store(enabled, Ordering::Relaxed);
    if !enabled && let Ok(mut cache) = scram_cache().lock() {
        cache.clear();
    }
}

fn salted_password(hash: ScramHash, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
    if !SCRAM_CACHE_ENABLED.load(Ordering::Relaxed) {
        return hash.salted_password(password, salt, iterations);
    }
    // Keyed by a MAC under a per-process key, not the password itself, so the cache's keys
    // are not a list of passwords.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(crate::secret::process_key())
        .expect("HMAC takes keys of any length");
    mac.update(password);
    let key: CacheKey = (
        hash == ScramHash::Sha1,
        mac.finalize().into_bytes().into(),
        salt.to_vec(),
        iterations,
    );
    if let Some(hit) = scram_cache().lock().ok().and_then(|c| c.get(&key).cloned()) {
        return hit;
    }
    let salted = hash.salted_password(password, salt, iterations);
    if let Ok(mut cache) = scram_cache().lock() {
        if cache.len() >= SCRAM_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(key, salted.clone());
    }
    salted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chris() -> ClientCredentials {
        ClientCredentials {
            realm: None,
            service: "imap".into(),
            host: "elwood.innosoft.com".into(),
            ..ClientCredentials::new("chris", "secret")
        }
    }

    #[test]
    fn digest_md5_client_reproduces_rfc2831_response_and_checks_rspauth() {
        let mut c =
            ClientExchange::with_nonce(Mechanism::DigestMd5, chris(), "OA6MHXh6VqTrRk").unwrap();
        assert_eq!(c.initial_response(), None);
        let challenge = b"realm=\"elwood.innosoft.com\",nonce=\"OA6MG9tEQGm2hh\",qop=\"auth\",algorithm=md5-sess,charset=utf-8";
        let ClientStep::Respond(r) = c.step(challenge).unwrap() else {
            panic!("expected a response")
        };
        assert_eq!(
            String::from_utf8(r).unwrap(),
            "charset=utf-8,username=\"chris\",realm=\"elwood.innosoft.com\",nonce=\"OA6MG9tEQGm2hh\",nc=00000001,cnonce=\"OA6MHXh6VqTrRk\",digest-uri=\"imap/elwood.innosoft.com\",response=d388dad90d4bbd760a152321f2143af7,qop=auth"
        );
        assert_eq!(
            c.step(b"rspauth=ea40f60335c427b5527b84dbabcdfffd").unwrap(),
            ClientStep::Respond(Vec::new())
        );
        assert!(c.is_finished());
    }

    #[test]
    fn digest_md5_client_rejects_forged_rspauth() {
        let mut c =
            ClientExchange::with_nonce(Mechanism::DigestMd5, chris(), "OA6MHXh6VqTrRk").unwrap();
        c.step(b"realm=\"elwood.innosoft.com\",nonce=\"OA6MG9tEQGm2hh\",qop=\"auth\",algorithm=md5-sess,charset=utf-8").unwrap();
        assert_eq!(
            c.verify_final(b"rspauth=00000000000000000000000000000000"),
            Err(ClientError::ServerAuthenticationFailed)
        );
    }

    #[test]
    fn scram_sha1_client_reproduces_rfc5802_exchange() {
        let creds = ClientCredentials::new("user", "pencil");
        let mut c =
            ClientExchange::with_nonce(Mechanism::ScramSha1, creds, "fyko+d2lbbFgONRv9qkxdawL")
                .unwrap();
        assert_eq!(
            c.initial_response().unwrap(),
            b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL"
        );
        let step = c
            .step(b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096")
            .unwrap();
        assert_eq!(
            step,
            ClientStep::Respond(
                b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
                    .to_vec()
            )
        );
        c.verify_final(b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=").unwrap();
    }

    #[test]
    fn scram_client_rejects_bad_server_signature_and_foreign_nonce() {
        let creds = ClientCredentials::new("user", "pencil");
        let mut c = ClientExchange::with_nonce(Mechanism::ScramSha1, creds.clone(), "abc").unwrap();
        c.initial_response();
        c.step(b"r=abcdef,s=QSXCR+Q6sek8bf92,i=1").unwrap();
        assert_eq!(
            c.step(b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ="),
            Err(ClientError::ServerAuthenticationFailed)
        );
        let mut c = ClientExchange::with_nonce(Mechanism::ScramSha1, creds.clone(), "abc").unwrap();
        c.initial_response();
        assert!(matches!(
            c.step(b"r=xyzdef,s=QSXCR+Q6sek8bf92,i=1"),
            Err(ClientError::MalformedChallenge(_))
        ));
        let mut c = ClientExchange::with_nonce(Mechanism::ScramSha1, creds, "abc").unwrap();
        c.initial_response();
        assert!(matches!(
            c.step(b"r=abcdef,s=QSXCR+Q6sek8bf92,i=4000000000"),
            Err(ClientError::MalformedChallenge(_))
        ));
    }

    #[test]
    fn plus_client_requires_a_channel_binding() {
        assert_eq!(
            ClientExchange::new(Mechanism::ScramSha256Plus, ClientCredentials::new("u", "p"))
                .unwrap_err(),
            ClientError::ChannelBindingUnavailable
        );
    }

    #[test]
    fn credentials_debug_redacts_the_password() {
        let shown = format!("{:?}", ClientCredentials::new("alice", "s3cr3t-pw"));
        assert!(
            shown.contains("alice") && !shown.contains("s3cr3t-pw"),
            "{shown}"
        );
        let exchange = ClientExchange::new(
            Mechanism::Plain,
            ClientCredentials::new("alice", "s3cr3t-pw"),
        )
        .unwrap();
        assert!(!format!("{exchange:?}").contains("s3cr3t-pw"));
    }

    #[test]
    fn scram_cache_gives_the_same_salted_password() {
        set_scram_cache(true);
        let a = salted_password(ScramHash::Sha256, b"pw", b"salt", 64);
        let b = salted_password(ScramHash::Sha256, b"pw", b"salt", 64);
        set_scram_cache(false);
        assert_eq!(a, b);
        assert_eq!(a, ScramHash::Sha256.salted_password(b"pw", b"salt", 64));
    }
}
