//! Where users and their secrets are kept. Two backends behind one type,
//! one behaviour test suite run against both.

mod file;
mod postgres;

use std::collections::BTreeMap;

use authrelay_sasl::{SecretFamily, StoredSecret};

pub use file::FileBackend;
pub use postgres::PostgresBackend;

use crate::StoreError;

/// One user: every secret it holds, replaced together or not at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRecord {
    pub name: String,
    pub realm: String,
    pub secrets: BTreeMap<SecretFamily, StoredSecret>,
}

/// A listing row: who, and which secret families they hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserSummary {
    pub name: String,
    pub realm: String,
    pub families: Vec<SecretFamily>,
}

/// An enum, not a trait object: two backends chosen once at start.
pub enum Backend {
    File(FileBackend),
    Postgres(Box<PostgresBackend>),
}

impl Backend {
    pub fn kind(&self) -> &'static str {
        match self {
            Backend::File(_) => "file",
            Backend::Postgres(_) => "postgres",
        }
    }

    pub async fn get_secret(
        &self,
        name: &str,
        realm: &str,
        family: SecretFamily,
    ) -> Result<Option<StoredSecret>, StoreError> {
        match self {
            Backend::File(b) => b.get_secret(name, realm, family).await,
            Backend::Postgres(b) => b.get_secret(name, realm, family).await,
        }
    }

    /// Replace the user's secrets atomically: after a crash the user has
    /// either all its old secrets or all its new ones. Returns true when the
    /// user did not exist before. With `create_only`, an existing user is
    /// `AlreadyExists` and nothing changes.
    pub async fn put_user(&self, user: UserRecord, create_only: bool) -> Result<bool, StoreError> {
        match self {
            Backend::File(b) => b.put_user(user, create_only).await,
            Backend::Postgres(b) => b.put_user(user, create_only).await,
        }
    }

    pub async fn delete_user(&self, name: &str, realm: &str) -> Result<(), StoreError> {
        match self {
            Backend::File(b) => b.delete_user(name, realm).await,
            Backend::Postgres(b) => b.delete_user(name, realm).await,
        }
    }

    /// Users sorted by realm then name, optionally of one realm.
    pub async fn list_users(&self, realm: Option<&str>) -> Result<Vec<UserSummary>, StoreError> {
        match self {
            Backend::File(b) => b.list_users(realm).await,
            Backend::Postgres(b) => b.list_users(realm).await,
        }
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Backend::File(_) => Ok(()),
            Backend::Postgres(b) => b.ping().await,
        }
    }
}

fn encode_secret(s: &StoredSecret) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(s).map_err(|e| StoreError::Backend(format!("encode secret: {e}")))
}

fn decode_secret(b: &[u8]) -> Result<StoredSecret, StoreError> {
    serde_json::from_slice(b).map_err(|e| StoreError::Backend(format!("decode secret: {e}")))
}

#[cfg(test)]
mod tests;
