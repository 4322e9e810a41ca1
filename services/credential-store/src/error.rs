use tonic::Status;

/// Everything the credential-store can refuse or fail at. Mapped to a gRPC
/// status in exactly one place ([`From<StoreError> for Status`]).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid user name: {0}")]
    InvalidName(&'static str),
    #[error("invalid realm: {0}")]
    InvalidRealm(&'static str),
    #[error("invalid password: {0}")]
    InvalidPassword(&'static str),
    #[error("unknown or password-less mechanism {0:?}")]
    UnknownMechanism(String),
    #[error("unknown secret family {0:?}")]
    UnknownFamily(String),
    #[error("no such user")]
    NotFound,
    #[error("user already exists")]
    AlreadyExists,
    #[error("invalid secret: {0}")]
    InvalidSecret(&'static str),
    /// Encryption at rest refused a record: fail closed, never a secret in the text.
    #[error("sealed storage: {0}")]
    Sealing(String),
    /// Storage failed; the text names the operation, never a secret.
    #[error("storage: {0}")]
    Backend(String),
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Status {
        let msg = e.to_string();
        match e {
            StoreError::InvalidName(_)
            | StoreError::InvalidRealm(_)
            | StoreError::InvalidPassword(_)
            | StoreError::UnknownMechanism(_)
            | StoreError::UnknownFamily(_)
            | StoreError::InvalidSecret(_) => Status::invalid_argument(msg),
            StoreError::Sealing(_) => Status::internal(msg),
            StoreError::NotFound => Status::not_found(msg),
            StoreError::AlreadyExists => Status::already_exists(msg),
            StoreError::Backend(_) => Status::unavailable(msg),
        }
    }
}
