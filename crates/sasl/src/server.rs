//! The server side of every mechanism, as one resumable state machine.
//!
//! ```text
//! start(cfg, initial_response) ─┐
//! step(cfg, response) ──────────┼─> Challenge(bytes)   send as 334, feed the reply to step()
//!                               ├─> NeedSecret(req)    fetch req's secret, call resume()
//! resume(cfg, secret) ──────────┼─> Success(outcome)   send additional_data (if any) as 334,
//!                               │                      wait for an empty reply, then 235
//!                               ├─> Failure(failure)   reply per failure; the exchange is over
//!                               └─> VerifyToken(msg)   OAUTHBEARER/XOAUTH2: check msg.token against
//! resume_token(cfg, user | why) ─┘                      the issuer, call resume_token()
//! ```
//!
//! The exchange serialises (serde) between round trips. What it serialises never includes a
//! password or anything derived from one: PLAIN and LOGIN keep the password they received in
//! a field that serde skips, which lives only between `NeedSecret` and `resume()` within one
//! request, and secrets given to `resume()` are used and dropped. SCRAM therefore asks for
//! its secret twice: once for salt and iteration count, once for the keys.

mod digest;
mod scram;

use std::fmt;

use rand::RngCore as _;
use subtle::ConstantTimeEq as _;

use crate::binding::{ChannelBinding, ChannelBindingType};
use crate::md5ctx::hmac_md5_from_contexts;
use crate::mechanism::{LOGIN_PASSWORD, LOGIN_USERNAME, Mechanism, SecretFamily};
use crate::oauth::{BearerMessage, parse_oauthbearer, parse_xoauth2};
use crate::secret::{StoredSecret, dummy_secret, verify_password};

/// The largest response accepted from a client, for any mechanism. Legitimate responses are a
/// few hundred bytes; this stops memory abuse before any parsing.
const MAX_RESPONSE: usize = 8192;
/// Largest user name, authorization identity or password accepted. RFC 4616 §2 asks servers
/// to accept at least 255 octets; we allow comfortably more.
const MAX_FIELD: usize = 1024;

/// What the server knows about the connection the exchange runs on.
#[derive(Clone, Debug, Default)]
pub struct ServerConfig {
    /// Host in the CRAM-MD5 challenge.
    pub hostname: String,
    /// DIGEST-MD5 realms offered; the first is the default when a client names none.
    pub realms: Vec<String>,
    /// DIGEST-MD5 `digest-uri` service; `"smtp"` when empty.
    pub service: String,
    /// Channel bindings this TLS session offers (empty without TLS).
    pub channel_bindings: Vec<ChannelBinding>,
    /// Whether `-PLUS` was advertised to this client, for the SCRAM `y` downgrade check
    /// (RFC 5802 §6).
    pub plus_advertised: bool,
    /// Identity from a verified TLS client certificate, for EXTERNAL.
    pub external_identity: Option<String>,
}

impl ServerConfig {
    fn service(&self) -> &str {
        if self.service.is_empty() {
            "smtp"
        } else {
            &self.service
        }
    }

    fn hostname(&self) -> &str {
        if self.hostname.is_empty() {
            "localhost"
        } else {
            &self.hostname
        }
    }

    fn channel_binding(&self, kind: ChannelBindingType) -> Option<&ChannelBinding> {
        self.channel_bindings.iter().find(|b| b.kind == kind)
    }
}

/// What the SMTP layer does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Send these raw bytes as a 334 challenge (base64 is the SMTP layer's job).
    Challenge(Vec<u8>),
    /// Fetch this secret and call [`ServerExchange::resume`].
    NeedSecret(SecretRequest),
    /// Authenticated.
    Success(Outcome),
    /// Not authenticated; the exchange is over.
    Failure(Failure),
    /// Check this bearer token (OAUTHBEARER, XOAUTH2) and call
    /// [`ServerExchange::resume_token`] with the user it names.
    VerifyToken(BearerMessage),
}

/// The secret the server needs to continue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretRequest {
    /// What the client sent; splitting `name@realm` is the caller's job. (DIGEST-MD5
    /// alone sends `NAME` for a `username="NAME@REALM"` in its own `realm`, whose
    /// qualified hash it checks.)
    pub authcid: String,
    /// Only when the mechanism carries a realm (DIGEST-MD5's `realm` directive).
    pub realm: Option<String>,
    pub family: SecretFamily,
}

/// A successful authentication.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub mechanism: Mechanism,
    pub authcid: String,
    pub realm: Option<String>,
    /// `None` when absent or empty. Whether `authcid` may act as it is the caller's policy.
    pub authzid: Option<String>,
    pub ssf: u32,
    /// SCRAM `v=…` or DIGEST-MD5 `rspauth=…`: send as a 334 challenge and wait for an empty
    /// reply before 235 (RFC 4954 §4).
    pub additional_data: Option<Vec<u8>>,
}

/// Why an exchange failed. Messages are static: they are logged, and must never carry
/// payload bytes, user names, nonces or secrets.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// SMTP 501 5.5.2.
    #[error("malformed response: {0}")]
    Malformed(&'static str),
    /// SMTP 535 5.7.8; the same for an unknown user and a wrong password.
    #[error("authentication failure")]
    InvalidCredentials,
    #[error("channel binding failure: {0}")]
    ChannelBinding(&'static str),
    /// SMTP 535 5.7.8, after the RFC 7628 §3.2.2 error challenge.
    #[error("invalid bearer token: {0}")]
    InvalidToken(&'static str),
    /// The mechanism cannot run on this connection (`-PLUS` without TLS, EXTERNAL without a
    /// client certificate).
    #[error("mechanism not available: {0}")]
    Unavailable(&'static str),
    #[error("exchange already finished")]
    Finished,
}

/// A plaintext password received by PLAIN or LOGIN, held only until `resume()`.
#[derive(Clone)]
struct HeldPassword(Vec<u8>);

impl fmt::Debug for HeldPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// One server-side SASL exchange.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct ServerExchange {
    mechanism: Mechanism,
    state: State,
    /// Set only by `with_nonce`, for the RFC vectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fixed_nonce: Option<String>,
    /// The DIGEST-MD5 nonce we issued, kept after the exchange so the caller can record it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    digest_nonce: Option<String>,
    /// PLAIN/LOGIN password between `NeedSecret` and `resume()`. Never serialised: an
    /// exchange stored in Redis must not hold a password.
    #[serde(skip)]
    password: Option<HeldPassword>,
}

#[derive(Clone, serde::Serialize, serde::Deserialize)]
enum State {
    New,
    AwaitPlain,
    PlainSecret {
        authcid: String,
        authzid: Option<String>,
    },
    AwaitLoginUsername,
    AwaitLoginPassword {
        username: String,
    },
    LoginSecret {
        username: String,
    },
    AwaitCram {
        challenge: String,
    },
    CramSecret {
        challenge: String,
        username: String,
        digest: [u8; 16],
    },
    Digest(digest::DigestState),
    Scram(scram::ScramState),
    AwaitExternal,
    /// OAUTHBEARER/XOAUTH2 without an initial response: the message comes next.
    AwaitBearer,
    /// The token is being checked; `authzid` is whom the client claimed to be.
    BearerPending {
        authzid: Option<String>,
    },
    Done,
}

impl State {
    fn phase(&self) -> &'static str {
        match self {
            State::New => "new",
            State::AwaitPlain
            | State::AwaitLoginUsername
            | State::AwaitLoginPassword { .. }
            | State::AwaitCram { .. }
            | State::AwaitExternal
            | State::AwaitBearer => "awaiting response",
            State::BearerPending { .. } => "awaiting token check",
            State::PlainSecret { .. } | State::LoginSecret { .. } | State::CramSecret { .. } => {
                "awaiting secret"
            }
            State::Digest(d) => d.phase(),
            State::Scram(s) => s.phase(),
            State::Done => "finished",
        }
    }
}

/// Shows the mechanism and phase only: the state holds user names and nonces.
impl fmt::Debug for ServerExchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerExchange")
            .field("mechanism", &self.mechanism)
            .field("phase", &self.state.phase())
            .finish_non_exhaustive()
    }
}

type Flow = Result<Step, Failure>;

impl ServerExchange {
    pub fn new(mechanism: Mechanism) -> Self {
        Self {
            mechanism,
            state: State::New,
            fixed_nonce: None,
            digest_nonce: None,
            password: None,
        }
    }

    /// An exchange whose server nonce is fixed: the CRAM-MD5 challenge, the DIGEST-MD5
    /// nonce, or the part SCRAM appends to the client nonce. For the RFC vector tests only:
    /// a predictable nonce allows replay.
    #[doc(hidden)]
    pub fn with_nonce(mechanism: Mechanism, nonce: &str) -> Self {
        Self {
            fixed_nonce: Some(nonce.to_owned()),
            ..Self::new(mechanism)
        }
    }

    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// Whether the exchange has succeeded or failed.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Waiting for the client's credentials with nothing of the server's in the state: PLAIN
    /// after an empty challenge, LOGIN before the user name or the password. Such a state holds
    /// no nonce or challenge to replay and no secret, only what the client sent, so a caller
    /// may hand it around (sasl-auth carries it in the exchange id instead of Redis). From any
    /// other state — CRAM-MD5's challenge, DIGEST-MD5's and SCRAM's nonces — this is false.
    pub fn awaits_client_credentials(&self) -> bool {
        self.digest_nonce.is_none()
            && matches!(
                (self.mechanism, &self.state),
                (Mechanism::Plain, State::AwaitPlain)
                    | (
                        Mechanism::Login,
                        State::AwaitLoginUsername | State::AwaitLoginPassword { .. }
                    )
                    | (
                        Mechanism::OAuthBearer | Mechanism::XOAuth2,
                        State::AwaitBearer
                    )
            )
    }

    /// The DIGEST-MD5 nonce issued, so the caller can record it as used: RFC 2831 §2.1.2
    /// replay protection has to hold across replicas, which this crate cannot see.
    pub fn digest_nonce(&self) -> Option<&str> {
        self.digest_nonce.as_deref()
    }

    /// Begins the exchange after `AUTH <mechanism> [initial-response]`. An initial response
    /// of `=` (RFC 4954 §4) arrives here as `Some(b"")`.
    pub fn start(&mut self, cfg: &ServerConfig, initial_response: Option<&[u8]>) -> Step {
        let flow = match self.state {
            State::New if initial_response.is_some_and(|r| r.len() > MAX_RESPONSE) => {
                Err(Failure::Malformed("response too long"))
            }
            State::New => {
                self.state = State::Done;
                self.begin(cfg, initial_response)
            }
            State::Done => Err(Failure::Finished),
            _ => Err(Failure::Malformed("exchange already started")),
        };
        self.settle(flow)
    }

    /// Feeds the client's (base64-decoded) reply to the last challenge.
    pub fn step(&mut self, cfg: &ServerConfig, response: &[u8]) -> Step {
        if matches!(self.state, State::New) {
            return self.start(cfg, Some(response));
        }
        let state = std::mem::replace(&mut self.state, State::Done);
        let flow = if matches!(state, State::Done) {
            Err(Failure::Finished)
        } else if response.len() > MAX_RESPONSE {
            Err(Failure::Malformed("response too long"))
        } else {
            match state {
                State::AwaitPlain => self.plain(response),
                State::AwaitLoginUsername => self.login_username(response),
                State::AwaitLoginPassword { username } => self.login_password(username, response),
                State::AwaitCram { challenge } => self.cram_response(challenge, response),
                State::AwaitExternal => self.external(cfg, response),
                State::AwaitBearer => self.bearer(response),
                State::BearerPending { .. } => Err(Failure::Malformed("a token check is pending")),
                State::Digest(d) => digest::step(self, cfg, d, response),
                State::Scram(s) => scram::step(self, cfg, s, response),
                State::PlainSecret { .. }
                | State::LoginSecret { .. }
                | State::CramSecret { .. } => Err(Failure::Malformed("a secret is pending")),
                State::New | State::Done => Err(Failure::Finished),
            }
        };
        self.settle(flow)
    }

    /// Continues after [`Step::NeedSecret`] with the user's secret of the requested family.
    ///
    /// Pass `None` when the user is unknown, or has no secret of that family: the server then
    /// works against [`dummy_secret`] and fails exactly as for a wrong password, so an
    /// attacker cannot tell which users exist. A secret of another family fails with
    /// `InvalidCredentials`.
    pub fn resume(&mut self, cfg: &ServerConfig, secret: Option<&StoredSecret>) -> Step {
        let state = std::mem::replace(&mut self.state, State::Done);
        let flow = match state {
            State::PlainSecret { authcid, authzid } => {
                self.verify_plaintext(authcid, authzid, secret)
            }
            State::LoginSecret { username } => self.verify_plaintext(username, None, secret),
            State::CramSecret {
                challenge,
                username,
                digest,
            } => self.cram_verify(&challenge, username, digest, secret),
            State::Digest(d) => digest::resume(self, cfg, d, secret),
            State::Scram(s) => scram::resume(self, cfg, s, secret),
            State::Done => Err(Failure::Finished),
            _ => Err(Failure::Malformed("no secret was requested")),
        };
        self.settle(flow)
    }

    /// Continues after [`Step::VerifyToken`] with the verifier's verdict: the user the token
    /// names (as the verifier maps it), or why it was refused. The client's authzid, if it
    /// gave one, is left in [`Outcome::authzid`] for the caller to hold against the user.
    pub fn resume_token(&mut self, verdict: Result<String, &'static str>) -> Step {
        let state = std::mem::replace(&mut self.state, State::Done);
        let flow = match (state, verdict) {
            (State::BearerPending { authzid }, Ok(user)) => {
                Ok(self.success(user, None, authzid, None))
            }
            (State::BearerPending { .. }, Err(why)) => Err(Failure::InvalidToken(why)),
            (State::Done, _) => Err(Failure::Finished),
            _ => Err(Failure::Malformed("no token check was requested")),
        };
        self.settle(flow)
    }

    /// For a verified-credential cache: while a PLAIN or LOGIN exchange waits
    /// for its secret, an HMAC-SHA256 under the caller's process-local `key`
    /// over the login, the password and the stored hash. Two equal
    /// fingerprints mean "this password was verified against this very stored
    /// hash before"; a password change gives a new hash and so a miss. Not
    /// reversible, and worthless outside the process that holds `key`.
    pub fn plaintext_fingerprint(&self, key: &[u8], secret: &StoredSecret) -> Option<[u8; 32]> {
        use hmac::Mac as _;
        let authcid = match &self.state {
            State::PlainSecret { authcid, .. } => authcid,
            State::LoginSecret { username } => username,
            _ => return None,
        };
        let (StoredSecret::Password { phc }, Some(HeldPassword(password))) =
            (secret, &self.password)
        else {
            return None;
        };
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).ok()?;
        for part in [authcid.as_bytes(), password.as_slice(), phc.as_bytes()] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        Some(mac.finalize().into_bytes().into())
    }

    /// Complete a PLAIN or LOGIN exchange whose fingerprint matched a cached
    /// verification (see [`ServerExchange::plaintext_fingerprint`]): success
    /// without running Argon2 again.
    pub fn resume_verified(&mut self) -> Step {
        let state = std::mem::replace(&mut self.state, State::Done);
        let flow = match state {
            State::PlainSecret { authcid, authzid } => {
                Ok(self.success(authcid, None, authzid, None))
            }
            State::LoginSecret { username } => Ok(self.success(username, None, None, None)),
            _ => Err(Failure::Malformed("no plaintext verification pending")),
        };
        self.settle(flow)
    }

    fn settle(&mut self, flow: Flow) -> Step {
        let step = flow.unwrap_or_else(Step::Failure);
        if matches!(step, Step::Success(_) | Step::Failure(_)) {
            self.state = State::Done;
        }
        if !matches!(
            self.state,
            State::PlainSecret { .. } | State::LoginSecret { .. }
        ) {
            self.password = None;
        }
        step
    }

    fn begin(&mut self, cfg: &ServerConfig, initial: Option<&[u8]>) -> Flow {
        // Server-first mechanisms have nothing to read in an initial response; RFC 4954 §4's
        // empty one ("=") is the same as none.
        let server_first_initial = initial.filter(|r| !r.is_empty());
        match self.mechanism {
            Mechanism::Plain => match initial {
                Some(message) => self.plain(message),
                None => {
                    self.state = State::AwaitPlain;
                    Ok(Step::Challenge(Vec::new()))
                }
            },
            Mechanism::Login => match server_first_initial {
                // Clients that send the user name on the AUTH line (RFC 4954 §4 style).
                Some(username) => self.login_username(username),
                None => {
                    self.state = State::AwaitLoginUsername;
                    Ok(Step::Challenge(LOGIN_USERNAME.to_vec()))
                }
            },
            Mechanism::CramMd5 => {
                if server_first_initial.is_some() {
                    return Err(Failure::Malformed("CRAM-MD5 takes no initial response"));
                }
                let challenge = match &self.fixed_nonce {
                    Some(fixed) => fixed.clone(),
                    None => cram_challenge(cfg.hostname()),
                };
                self.state = State::AwaitCram {
                    challenge: challenge.clone(),
                };
                Ok(Step::Challenge(challenge.into_bytes()))
            }
            Mechanism::DigestMd5 => {
                if server_first_initial.is_some() {
                    // RFC 2831 §2.2 subsequent authentication is not supported.
                    return Err(Failure::Malformed("DIGEST-MD5 takes no initial response"));
                }
                digest::start(self, cfg)
            }
            Mechanism::ScramSha1
            | Mechanism::ScramSha1Plus
            | Mechanism::ScramSha256
            | Mechanism::ScramSha256Plus => scram::start(self, cfg, initial),
            // Client-first; without an initial response the server sends an empty challenge
            // (RFC 4422 §5) and the message follows.
            Mechanism::OAuthBearer | Mechanism::XOAuth2 => match initial {
                Some(message) => self.bearer(message),
                None => {
                    self.state = State::AwaitBearer;
                    Ok(Step::Challenge(Vec::new()))
                }
            },
            Mechanism::External => {
                if cfg.external_identity.is_none() {
                    return Err(Failure::Unavailable("no verified client certificate"));
                }
                match initial {
                    Some(authzid) => self.external(cfg, authzid),
                    None => {
                        self.state = State::AwaitExternal;
                        Ok(Step::Challenge(Vec::new()))
                    }
                }
            }
        }
    }

    /// RFC 4616 §2: `[authzid] NUL authcid NUL passwd`.
    fn plain(&mut self, message: &[u8]) -> Flow {
        let mut parts = message.split(|&b| b == 0);
        let (Some(authzid), Some(authcid), Some(password), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Failure::Malformed("PLAIN message needs exactly two NULs"));
        };
        let authzid = utf8_field(authzid, "authzid is not valid UTF-8")?;
        let authcid = utf8_field(authcid, "authcid is not valid UTF-8")?;
        if std::str::from_utf8(password).is_err() {
            return Err(Failure::Malformed("password is not valid UTF-8"));
        }
        if authcid.is_empty() {
            return Err(Failure::Malformed("empty authcid"));
        }
        if password.is_empty() {
            return Err(Failure::Malformed("empty password"));
        }
        if password.len() > MAX_FIELD {
            return Err(Failure::Malformed("password too long"));
        }
        self.password = Some(HeldPassword(password.to_vec()));
        self.state = State::PlainSecret {
            authcid: authcid.clone(),
            authzid: non_empty(authzid),
        };
        Ok(Step::NeedSecret(SecretRequest {
            authcid,
            realm: None,
            family: SecretFamily::Password,
        }))
    }

    fn login_username(&mut self, response: &[u8]) -> Flow {
        let username = utf8_field(response, "user name is not valid UTF-8")?;
        if username.is_empty() {
            return Err(Failure::Malformed("empty user name"));
        }
        if username.contains('\0') {
            return Err(Failure::Malformed("NUL in user name"));
        }
        self.state = State::AwaitLoginPassword { username };
        Ok(Step::Challenge(LOGIN_PASSWORD.to_vec()))
    }

    fn login_password(&mut self, username: String, response: &[u8]) -> Flow {
        if response.is_empty() {
            return Err(Failure::Malformed("empty password"));
        }
        if response.len() > MAX_FIELD {
            return Err(Failure::Malformed("password too long"));
        }
        self.password = Some(HeldPassword(response.to_vec()));
        self.state = State::LoginSecret {
            username: username.clone(),
        };
        Ok(Step::NeedSecret(SecretRequest {
            authcid: username,
            realm: None,
            family: SecretFamily::Password,
        }))
    }

    fn verify_plaintext(
        &mut self,
        authcid: String,
        authzid: Option<String>,
        secret: Option<&StoredSecret>,
    ) -> Flow {
        let Some(HeldPassword(password)) = self.password.take() else {
            // The password is never serialised, so it is gone if the exchange went through
            // Redis between NeedSecret and resume. That is a caller bug, not a bad password.
            return Err(Failure::Unavailable(
                "plaintext password not held: exchange was serialised before resume",
            ));
        };
        let dummy;
        let phc = match secret {
            Some(StoredSecret::Password { phc }) => phc,
            Some(_) => return Err(Failure::InvalidCredentials),
            None => {
                dummy = dummy_secret(SecretFamily::Password, &authcid);
                match &dummy {
                    StoredSecret::Password { phc } => phc,
                    _ => return Err(Failure::InvalidCredentials),
                }
            }
        };
        // Run Argon2 even for an unknown user, so timing does not reveal existence.
        let matches = verify_password(phc, &password);
        if matches && secret.is_some() {
            Ok(self.success(authcid, None, authzid, None))
        } else {
            Err(Failure::InvalidCredentials)
        }
    }

    /// RFC 2195 §2: `user SP digest`, digest being 32 hex digits. The user name may itself
    /// contain spaces, so the digest is whatever follows the last one.
    fn cram_response(&mut self, challenge: String, response: &[u8]) -> Flow {
        let text = std::str::from_utf8(response)
            .map_err(|_| Failure::Malformed("CRAM-MD5 response is not valid UTF-8"))?;
        let (username, digest_hex) = text
            .rsplit_once(' ')
            .ok_or(Failure::Malformed("CRAM-MD5 response needs 'user digest'"))?;
        if username.is_empty() {
            return Err(Failure::Malformed("empty user name"));
        }
        if username.len() > MAX_FIELD {
            return Err(Failure::Malformed("user name too long"));
        }
        let mut digest = [0u8; 16];
        hex::decode_to_slice(digest_hex, &mut digest)
            .map_err(|_| Failure::Malformed("CRAM-MD5 digest is not 32 hex digits"))?;
        self.state = State::CramSecret {
            challenge,
            username: username.to_owned(),
            digest,
        };
        Ok(Step::NeedSecret(SecretRequest {
            authcid: username.to_owned(),
            realm: None,
            family: SecretFamily::CramMd5,
        }))
    }

    fn cram_verify(
        &mut self,
        challenge: &str,
        username: String,
        digest: [u8; 16],
        secret: Option<&StoredSecret>,
    ) -> Flow {
        let dummy;
        let (inner, outer) = match secret {
            Some(StoredSecret::CramMd5 { inner, outer }) => (inner, outer),
            Some(_) => return Err(Failure::InvalidCredentials),
            None => {
                dummy = dummy_secret(SecretFamily::CramMd5, &username);
                match &dummy {
                    StoredSecret::CramMd5 { inner, outer } => (inner, outer),
                    _ => return Err(Failure::InvalidCredentials),
                }
            }
        };
        let expected = hmac_md5_from_contexts(inner, outer, challenge.as_bytes());
        if bool::from(expected.ct_eq(&digest)) && secret.is_some() {
            Ok(self.success(username, None, None, None))
        } else {
            Err(Failure::InvalidCredentials)
        }
    }

    /// RFC 7628 §3.1 / XOAUTH2: the token is checked by the caller (it needs the issuer's
    /// keys), so the exchange only reads the message and waits for the verdict.
    fn bearer(&mut self, message: &[u8]) -> Flow {
        let parsed = match self.mechanism {
            Mechanism::XOAuth2 => parse_xoauth2(message),
            _ => parse_oauthbearer(message),
        }
        .map_err(|e| Failure::Malformed(e.0))?;
        if parsed.authzid.as_ref().is_some_and(|a| a.len() > MAX_FIELD) {
            return Err(Failure::Malformed("authzid too long"));
        }
        self.state = State::BearerPending {
            authzid: parsed.authzid.clone(),
        };
        Ok(Step::VerifyToken(parsed))
    }

    /// RFC 4422 Appendix A: the identity comes from TLS; the message is only an optional
    /// authorization identity.
    fn external(&mut self, cfg: &ServerConfig, response: &[u8]) -> Flow {
        let Some(identity) = cfg.external_identity.clone() else {
            return Err(Failure::Unavailable("no verified client certificate"));
        };
        let authzid = utf8_field(response, "authzid is not valid UTF-8")?;
        if authzid.contains('\0') {
            return Err(Failure::Malformed("NUL in authzid"));
        }
        let authzid = non_empty(authzid).filter(|a| *a != identity);
        Ok(self.success(identity, None, authzid, None))
    }

    fn success(
        &self,
        authcid: String,
        realm: Option<String>,
        authzid: Option<String>,
        additional_data: Option<Vec<u8>>,
    ) -> Step {
        Step::Success(Outcome {
            mechanism: self.mechanism,
            authcid,
            realm,
            authzid,
            ssf: self.mechanism.ssf(),
            additional_data,
        })
    }
}

/// `<random.timestamp@host>` (RFC 2195 §2, after RFC 1939's APOP): fresh per exchange so a
/// captured response cannot be replayed.
fn cram_challenge(hostname: &str) -> String {
    // ThreadRng: a CSPRNG (ChaCha12, seeded from the OS) without a getrandom(2) call per AUTH.
    let random = rand::thread_rng().next_u64();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("<{random}.{now}@{hostname}>")
}

fn utf8_field(bytes: &[u8], error: &'static str) -> Result<String, Failure> {
    if bytes.len() > MAX_FIELD {
        return Err(Failure::Malformed("field too long"));
    }
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| Failure::Malformed(error))
}

fn non_empty(s: String) -> Option<String> {
    if s.is_empty() { None } else { Some(s) }
}
