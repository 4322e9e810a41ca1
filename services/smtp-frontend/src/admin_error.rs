//! What the frontend's admin APIs (`authrelay sessions …`, `authrelay user
//! limit|unlock|show`) can fail at: one enum, turned into a gRPC status in
//! one place, as credential-store's `StoreError` is.

use authrelay_state::StateError;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The shared store (Redis) holding every frontend's sessions and
    /// account counts did not answer: the caller may try again.
    #[error(transparent)]
    State(#[from] StateError),
    /// Not NAME@REALM, or with characters that have no place in a store key
    /// or a log line.
    #[error("account must be NAME@REALM, without spaces or control characters")]
    InvalidAccount,
    #[error("unknown limit {name:?}; known: {known}")]
    UnknownLimit { name: String, known: String },
    #[error("{0}: at most 1000000000 (0 = no limit)")]
    LimitTooHigh(String),
}

impl From<AdminError> for tonic::Status {
    fn from(e: AdminError) -> tonic::Status {
        match e {
            AdminError::State(_) => tonic::Status::unavailable(e.to_string()),
            AdminError::InvalidAccount
            | AdminError::UnknownLimit { .. }
            | AdminError::LimitTooHigh(_) => tonic::Status::invalid_argument(e.to_string()),
        }
    }
}
