//! What the frontend's admin API (`authrelay sessions …`) can fail at: one
//! enum, turned into a gRPC status in one place, as credential-store's
//! `StoreError` is.

use authrelay_state::StateError;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The shared store (Redis) holding every frontend's sessions did not
    /// answer: the caller may try again.
    #[error(transparent)]
    State(#[from] StateError),
}

impl From<AdminError> for tonic::Status {
    fn from(e: AdminError) -> tonic::Status {
        match e {
            AdminError::State(_) => tonic::Status::unavailable(e.to_string()),
        }
    }
}
