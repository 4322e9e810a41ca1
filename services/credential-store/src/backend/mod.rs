//! Where users and their secrets are kept. Two backends behind one type,
//! one behaviour test suite run against both. Backends store opaque
//! entries; [`Store`] turns secrets into entries and back, sealing them
//! when encryption at rest is on.

mod file;
mod postgres;

use std::collections::BTreeMap;
use std::sync::Arc;

use authrelay_sasl::{SecretFamily, StoredSecret};

pub use file::{FileBackend, USERS as FILE_USERS_TABLE};
pub use postgres::PostgresBackend;

use crate::StoreError;
use crate::seal::Keyring;

/// One user: every secret it holds, replaced together or not at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRecord {
    pub name: String,
    pub realm: String,
    pub secrets: BTreeMap<SecretFamily, StoredSecret>,
}

/// A user as a backend sees it: one opaque entry per family.
#[derive(Clone, Debug)]
pub struct RawUser {
    pub name: String,
    pub realm: String,
    pub entries: BTreeMap<SecretFamily, Vec<u8>>,
}

/// A listing row: who, and which secret families they hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserSummary {
    pub name: String,
    pub realm: String,
    pub families: Vec<SecretFamily>,
}

/// What a put did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// The user did not exist before.
    pub created: bool,
    /// The families the user holds now.
    pub families: Vec<SecretFamily>,
}

/// How a put treats an existing user. Decided inside the backend's write
/// transaction, so reading the old families and writing the new secrets
/// is one atomic step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PutMode {
    /// Fail with `AlreadyExists` (and change nothing) when the user exists.
    Create,
    /// Replace the user's secrets with exactly the given ones.
    Replace,
    /// Of the given secrets (derived for every family), store those of the
    /// families the user holds now; a new user gets `default`.
    KeepFamilies { default: Vec<SecretFamily> },
}

impl PutMode {
    fn families_to_store(
        &self,
        existing: Option<&[SecretFamily]>,
        given: &BTreeMap<SecretFamily, Vec<u8>>,
    ) -> Result<Vec<SecretFamily>, StoreError> {
        let given_families = || given.keys().copied().collect::<Vec<_>>();
        Ok(match (self, existing) {
            (PutMode::Create, Some(_)) => return Err(StoreError::AlreadyExists),
            (PutMode::Create | PutMode::Replace, _) => given_families(),
            (PutMode::KeepFamilies { .. }, Some(now)) => now
                .iter()
                .copied()
                .filter(|f| given.contains_key(f))
                .collect(),
            (PutMode::KeepFamilies { default }, None) => default
                .iter()
                .copied()
                .filter(|f| given.contains_key(f))
                .collect(),
        })
    }
}

/// A per-entry rewrite for a reseal: (realm, name, family, entry) → new
/// entry, or None to leave it.
pub type Rewrite = Arc<
    dyn Fn(&str, &str, SecretFamily, &[u8]) -> Result<Option<Vec<u8>>, StoreError> + Send + Sync,
>;

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

    pub async fn get(
        &self,
        name: &str,
        realm: &str,
        family: SecretFamily,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Backend::File(b) => b.get(name, realm, family).await,
            Backend::Postgres(b) => b.get(name, realm, family).await,
        }
    }

    /// Replace the user's entries atomically: after a crash the user has
    /// either all its old entries or all its new ones.
    pub async fn put(&self, user: RawUser, mode: PutMode) -> Result<Stored, StoreError> {
        match self {
            Backend::File(b) => b.put(user, mode).await,
            Backend::Postgres(b) => b.put(user, mode).await,
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

    /// Apply `f` to every stored entry; returns (rewritten, unchanged).
    /// An entry written concurrently is left as the writer made it.
    pub async fn rewrite_all(&self, f: Rewrite) -> Result<(u64, u64), StoreError> {
        match self {
            Backend::File(b) => b.rewrite_all(f).await,
            Backend::Postgres(b) => b.rewrite_all(f).await,
        }
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Backend::File(_) => Ok(()),
            Backend::Postgres(b) => b.ping().await,
        }
    }
}

/// A backend plus the keys that seal what it stores.
pub struct Store {
    backend: Backend,
    keys: Arc<Keyring>,
}

impl Store {
    pub fn new(backend: Backend, keys: Keyring) -> Store {
        Store {
            backend,
            keys: Arc::new(keys),
        }
    }

    pub fn kind(&self) -> &'static str {
        self.backend.kind()
    }

    pub fn key_id(&self) -> Option<&str> {
        self.keys.current_id()
    }

    pub async fn get_secret(
        &self,
        name: &str,
        realm: &str,
        family: SecretFamily,
    ) -> Result<Option<StoredSecret>, StoreError> {
        use tracing::Instrument;
        // The storage step of an AUTH trace (OpenTelemetry database conventions).
        let span = tracing::info_span!(
            "storage",
            otel.name = "credential-store storage read",
            otel.kind = "client",
            db.system = if self.backend.kind() == "file" {
                "redb"
            } else {
                "postgresql"
            },
            db.operation = "SELECT",
        );
        let stored = self
            .backend
            .get(name, realm, family)
            .instrument(span)
            .await?;
        match stored {
            None => Ok(None),
            Some(bytes) => self.keys.open(realm, name, family, &bytes).map(Some),
        }
    }

    pub async fn put_user(&self, user: UserRecord, mode: PutMode) -> Result<Stored, StoreError> {
        let mut entries = BTreeMap::new();
        for (family, secret) in &user.secrets {
            if secret.family() != *family {
                return Err(StoreError::Backend(format!(
                    "secret filed under {family} is another family"
                )));
            }
            entries.insert(*family, self.keys.seal(&user.realm, &user.name, secret)?);
        }
        self.backend
            .put(
                RawUser {
                    name: user.name,
                    realm: user.realm,
                    entries,
                },
                mode,
            )
            .await
    }

    pub async fn delete_user(&self, name: &str, realm: &str) -> Result<(), StoreError> {
        self.backend.delete_user(name, realm).await
    }

    pub async fn list_users(&self, realm: Option<&str>) -> Result<Vec<UserSummary>, StoreError> {
        self.backend.list_users(realm).await
    }

    /// Re-seal every entry under the current key; (resealed, unchanged).
    pub async fn reseal(&self) -> Result<(u64, u64), StoreError> {
        let keys = self.keys.clone();
        self.backend
            .rewrite_all(Arc::new(move |realm, name, family, bytes| {
                keys.reseal(realm, name, family, bytes)
            }))
            .await
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.backend.ping().await
    }
}

#[cfg(test)]
mod tests;
