//! The embedded backend: one redb file. redb commits are atomic and durable
//! (copy-on-write B-trees, fsync on commit), so a user's secrets are replaced
//! whole or not at all even if the process is killed mid-write.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use authrelay_sasl::{SecretFamily, StoredSecret};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{UserRecord, UserSummary, decode_secret, encode_secret};
use crate::StoreError;

/// key: "realm\0name" (NUL cannot occur in either); value: JSON map of
/// family name → secret.
const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users_v1");

#[derive(Clone)]
pub struct FileBackend {
    db: Arc<Database>,
}

fn key(name: &str, realm: &str) -> String {
    format!("{realm}\0{name}")
}

fn db_err(what: &'static str) -> impl Fn(redb::Error) -> StoreError {
    move |e| StoreError::Backend(format!("{what}: {e}"))
}

fn decode_record(bytes: &[u8]) -> Result<BTreeMap<String, serde_json::Value>, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Backend(format!("decode user: {e}")))
}

impl FileBackend {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Backend(format!("create {}: {e}", dir.display())))?;
        }
        let db = Database::create(path)
            .map_err(|e| StoreError::Backend(format!("open {}: {e}", path.display())))?;
        // Create the table up front so readers never see "table does not exist".
        let txn = db.begin_write().map_err(|e| db_err("begin")(e.into()))?;
        txn.open_table(USERS)
            .map_err(|e| db_err("open table")(e.into()))?;
        txn.commit().map_err(|e| db_err("commit")(e.into()))?;
        Ok(FileBackend { db: Arc::new(db) })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| StoreError::Backend(format!("task: {e}")))?
    }

    pub async fn get_secret(
        &self,
        name: &str,
        realm: &str,
        family: SecretFamily,
    ) -> Result<Option<StoredSecret>, StoreError> {
        let k = key(name, realm);
        self.blocking(move |db| {
            let txn = db
                .begin_read()
                .map_err(|e| db_err("begin read")(e.into()))?;
            let table = txn
                .open_table(USERS)
                .map_err(|e| db_err("open table")(e.into()))?;
            let Some(v) = table.get(k.as_str()).map_err(|e| db_err("get")(e.into()))? else {
                return Ok(None);
            };
            let map = decode_record(v.value())?;
            match map.get(family.name()) {
                Some(s) => {
                    let bytes =
                        serde_json::to_vec(s).map_err(|e| StoreError::Backend(e.to_string()))?;
                    decode_secret(&bytes).map(Some)
                }
                None => Ok(None),
            }
        })
        .await
    }

    pub async fn put_user(&self, user: UserRecord, create_only: bool) -> Result<bool, StoreError> {
        let k = key(&user.name, &user.realm);
        let mut map = BTreeMap::new();
        for (family, secret) in &user.secrets {
            let v: serde_json::Value = serde_json::from_slice(&encode_secret(secret)?)
                .map_err(|e| StoreError::Backend(e.to_string()))?;
            map.insert(family.name().to_owned(), v);
        }
        let value = serde_json::to_vec(&map).map_err(|e| StoreError::Backend(e.to_string()))?;
        self.blocking(move |db| {
            let txn = db
                .begin_write()
                .map_err(|e| db_err("begin write")(e.into()))?;
            let created = {
                let mut table = txn
                    .open_table(USERS)
                    .map_err(|e| db_err("open table")(e.into()))?;
                let existed = table
                    .get(k.as_str())
                    .map_err(|e| db_err("get")(e.into()))?
                    .is_some();
                if existed && create_only {
                    return Err(StoreError::AlreadyExists);
                }
                table
                    .insert(k.as_str(), value.as_slice())
                    .map_err(|e| db_err("insert")(e.into()))?;
                !existed
            };
            txn.commit().map_err(|e| db_err("commit")(e.into()))?;
            Ok(created)
        })
        .await
    }

    pub async fn delete_user(&self, name: &str, realm: &str) -> Result<(), StoreError> {
        let k = key(name, realm);
        self.blocking(move |db| {
            let txn = db
                .begin_write()
                .map_err(|e| db_err("begin write")(e.into()))?;
            let removed = {
                let mut table = txn
                    .open_table(USERS)
                    .map_err(|e| db_err("open table")(e.into()))?;
                table
                    .remove(k.as_str())
                    .map_err(|e| db_err("remove")(e.into()))?
                    .is_some()
            };
            txn.commit().map_err(|e| db_err("commit")(e.into()))?;
            if removed {
                Ok(())
            } else {
                Err(StoreError::NotFound)
            }
        })
        .await
    }

    pub async fn list_users(&self, realm: Option<&str>) -> Result<Vec<UserSummary>, StoreError> {
        let realm = realm.map(str::to_owned);
        self.blocking(move |db| {
            let txn = db
                .begin_read()
                .map_err(|e| db_err("begin read")(e.into()))?;
            let table = txn
                .open_table(USERS)
                .map_err(|e| db_err("open table")(e.into()))?;
            let mut out = Vec::new();
            for item in table.iter().map_err(|e| db_err("iterate")(e.into()))? {
                let (k, v) = item.map_err(|e| db_err("iterate")(e.into()))?;
                let Some((r, n)) = k.value().split_once('\0') else {
                    continue;
                };
                if realm.as_deref().is_some_and(|want| want != r) {
                    continue;
                }
                let map = decode_record(v.value())?;
                let mut families: Vec<SecretFamily> = map
                    .keys()
                    .filter_map(|f| SecretFamily::from_name(f))
                    .collect();
                families.sort();
                out.push(UserSummary {
                    name: n.to_owned(),
                    realm: r.to_owned(),
                    families,
                });
            }
            Ok(out)
        })
        .await
    }
}
