use authrelay_proto::sasl::v1 as pb;
use authrelay_sasl::{Failure, Mechanism};
use authrelay_state::StateError;

/// Every way an AUTH can end other than success. Mapped to the wire (and so
/// to an SMTP reply) in one place: [`AuthError::into_response`].
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{failure}")]
    Mechanism {
        failure: Failure,
        mechanism: Mechanism,
        authcid: String,
    },
    /// OAUTHBEARER/XOAUTH2: the RFC 7628 §3.2.2 error JSON goes to the
    /// client as a 334 it answers, then 535.
    #[error("invalid bearer token: {why}")]
    TokenRefused {
        why: &'static str,
        mechanism: Mechanism,
        authcid: String,
        error_json: Vec<u8>,
    },
    #[error("mechanism not offered")]
    UnsupportedMechanism,
    #[error("{0} needs TLS first")]
    EncryptionRequired(Mechanism),
    #[error("exchange unknown, finished or expired")]
    ExchangeExpired,
    #[error("authorization identity not permitted")]
    AuthzDenied {
        mechanism: Mechanism,
        authcid: String,
    },
    #[error("too many authentication failures")]
    RateLimited {
        mechanism: Mechanism,
        authcid: String,
    },
    /// Redis, credential-store or a task failed: fail closed, temporarily.
    #[error("temporary failure: {0}")]
    Dependency(String),
}

impl From<StateError> for AuthError {
    fn from(e: StateError) -> Self {
        AuthError::Dependency(e.to_string())
    }
}

impl AuthError {
    pub fn into_response(self, mech_name: &str) -> pb::StepResponse {
        use pb::failure::Kind;
        let reason = self.to_string();
        let mut additional_data = None;
        let (kind, mechanism, authcid) = match self {
            AuthError::Mechanism {
                failure,
                mechanism,
                authcid,
            } => {
                let kind = match failure {
                    Failure::Malformed(_) => Kind::Malformed,
                    Failure::ChannelBinding(_) => Kind::ChannelBinding,
                    Failure::InvalidCredentials | Failure::Finished | Failure::InvalidToken(_) => {
                        Kind::InvalidCredentials
                    }
                    Failure::Unavailable(_) => Kind::UnsupportedMechanism,
                };
                if let (Failure::ChannelBinding(why), true) = (&failure, mechanism.is_scram()) {
                    additional_data = Some(scram_server_error(why).as_bytes().to_vec());
                }
                (kind, mechanism.name().to_owned(), authcid)
            }
            AuthError::TokenRefused {
                mechanism,
                authcid,
                error_json,
                ..
            } => {
                additional_data = Some(error_json);
                (
                    Kind::InvalidCredentials,
                    mechanism.name().to_owned(),
                    authcid,
                )
            }
            AuthError::UnsupportedMechanism => (
                Kind::UnsupportedMechanism,
                mech_name.to_owned(),
                String::new(),
            ),
            AuthError::EncryptionRequired(m) => {
                (Kind::EncryptionRequired, m.name().to_owned(), String::new())
            }
            AuthError::ExchangeExpired => {
                (Kind::ExchangeExpired, mech_name.to_owned(), String::new())
            }
            AuthError::AuthzDenied { mechanism, authcid } => (
                Kind::InvalidCredentials,
                mechanism.name().to_owned(),
                authcid,
            ),
            AuthError::RateLimited { mechanism, authcid } => {
                (Kind::RateLimited, mechanism.name().to_owned(), authcid)
            }
            AuthError::Dependency(_) => (Kind::Temporary, mech_name.to_owned(), String::new()),
        };
        if kind == Kind::Temporary {
            tracing::warn!(%reason, "AUTH failed closed");
        }
        pb::StepResponse {
            result: Some(pb::step_response::Result::Failure(pb::Failure {
                kind: kind as i32,
                reason,
                mechanism,
                authcid,
                additional_data,
            })),
        }
    }
}

/// RFC 5802 §7 server-error-value for a channel-binding failure: the
/// client learns why its -PLUS attempt failed instead of a bare 535.
fn scram_server_error(why: &str) -> &'static str {
    match why {
        "unsupported channel binding type" | "channel binding no longer available" => {
            "e=unsupported-channel-binding-type"
        }
        "client believes the server cannot bind: downgrade" => {
            "e=server-does-support-channel-binding"
        }
        "channel binding data mismatch" => "e=channel-bindings-dont-match",
        "channel binding requested on a non-PLUS mechanism" => "e=channel-binding-not-supported",
        _ => "e=other-error",
    }
}
