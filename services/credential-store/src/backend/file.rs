//! The embedded backend: one redb file. redb commits are atomic and durable
//! (copy-on-write B-trees, fsync on commit), so a user's secrets are replaced
//! whole or not at all even if the process is killed mid-write.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use authrelay_sasl::SecretFamily;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{PutMode, RawUser, Rewrite, Stored, UserSummary};
use crate::StoreError;

/// key: "realm\0name" (NUL cannot occur in either); value: JSON map of
/// family name → stored entry (the secret, or its sealed box).
pub const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users_v1");

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

type Record = BTreeMap<String, serde_json::Value>;

fn decode_record(bytes: &[u8]) -> Result<Record, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Backend(format!("decode user: {e}")))
}

fn encode_record(r: &Record) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(r).map_err(|e| StoreError::Backend(format!("encode user: {e}")))
}

fn entry_bytes(v: &serde_json::Value) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Backend(format!("encode entry: {e}")))
}

fn families_of(r: &Record) -> Vec<SecretFamily> {
    let mut f: Vec<SecretFamily> = r
        .keys()
        .filter_map(|f| SecretFamily::from_name(f))
        .collect();
    f.sort();
    f
}

/// Build a new, empty database under a temporary name beside `path` and
/// link it into place: the file appears under its name complete or not at
/// all. redb guards a database once it exists (atomic commits, repair after
/// a crash), but a process killed while redb wrote a brand-new file's
/// header left one that no later start could open ("invalid data").
/// `hard_link` rather than `rename`, because it never replaces: if another
/// process created `path` meanwhile, theirs stands and ours is dropped.
fn create_atomically(path: &Path) -> Result<(), StoreError> {
    let backend = |what: &str, e: &dyn std::fmt::Display| {
        StoreError::Backend(format!("{what} {}: {e}", path.display()))
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.new", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    // Left by an earlier creation killed midway with the same pid (in a
    // container that is always 1): never a database anyone used.
    let _ = std::fs::remove_file(&tmp);
    {
        // Made 0600 by us, whatever the umask, then handed to redb to
        // initialise: the secrets never sit in a file others may read.
        let file = authrelay_telemetry::private_fs::create_private_file(&tmp)
            .map_err(|e| backend("create", &e))?;
        let db = redb::Builder::new()
            .create_file(file)
            .map_err(|e| backend("create", &e))?;
        init_tables(&db)?;
    }
    match std::fs::hard_link(&tmp, path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        // A volume without hard links (some network file systems): rename,
        // which is as atomic, only without the never-replace guarantee.
        Err(_) if !path.exists() => {
            std::fs::rename(&tmp, path).map_err(|e| backend("rename into", &e))?;
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(backend("link", &e));
        }
    }
    let _ = std::fs::remove_file(&tmp);
    // The new name is durable only once its directory is.
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| backend("sync the directory of", &e))
}

/// Create the table up front so readers never see "table does not exist".
fn init_tables(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(|e| db_err("begin")(e.into()))?;
    txn.open_table(USERS)
        .map_err(|e| db_err("open table")(e.into()))?;
    txn.commit().map_err(|e| db_err("commit")(e.into()))
}

impl FileBackend {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        // The database's directory (data_dir by default) and the file
        // itself are the service user's alone: 0700 and 0600, tightened
        // when an older install or an operator left them open.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            authrelay_telemetry::private_fs::private_dir(dir)
                .map_err(|e| StoreError::Backend(format!("create {}: {e}", dir.display())))?;
        }
        if !path.exists() {
            create_atomically(path)?;
        }
        let db = Database::create(path)
            .map_err(|e| StoreError::Backend(format!("open {}: {e}", path.display())))?;
        authrelay_telemetry::private_fs::private_file(path)
            .map_err(|e| StoreError::Backend(format!("{}: {e}", path.display())))?;
        // Idempotent; an existing file that redb initialised but no table
        // was made in (say, an empty file an operator created) gets it too.
        init_tables(&db)?;
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

    pub async fn get(
        &self,
        name: &str,
        realm: &str,
        family: SecretFamily,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let k = key(name, realm);
        // Inline, not on the blocking pool: a read is a few page-cache
        // lookups in redb's copy-on-write tree, and the pool's thread
        // hand-off cost more than the read itself (it topped the profile of
        // an AUTH load). Writes, which fsync, stay on the pool.
        let db = &self.db;
        {
            let txn = db
                .begin_read()
                .map_err(|e| db_err("begin read")(e.into()))?;
            let table = txn
                .open_table(USERS)
                .map_err(|e| db_err("open table")(e.into()))?;
            let Some(v) = table.get(k.as_str()).map_err(|e| db_err("get")(e.into()))? else {
                return Ok(None);
            };
            decode_record(v.value())?
                .get(family.name())
                .map(entry_bytes)
                .transpose()
        }
    }

    pub async fn put(&self, user: RawUser, mode: PutMode) -> Result<Stored, StoreError> {
        let k = key(&user.name, &user.realm);
        let mut given = Record::new();
        for (family, bytes) in &user.entries {
            let v: serde_json::Value = serde_json::from_slice(bytes)
                .map_err(|e| StoreError::Backend(format!("encode entry: {e}")))?;
            given.insert(family.name().to_owned(), v);
        }
        self.blocking(move |db| {
            let txn = db
                .begin_write()
                .map_err(|e| db_err("begin write")(e.into()))?;
            let stored = {
                let mut table = txn
                    .open_table(USERS)
                    .map_err(|e| db_err("open table")(e.into()))?;
                // redb has one writer at a time: this read and the insert
                // below see no other write in between.
                let existing = table
                    .get(k.as_str())
                    .map_err(|e| db_err("get")(e.into()))?
                    .map(|v| decode_record(v.value()))
                    .transpose()?;
                let keep = mode.families_to_store(
                    existing.as_ref().map(families_of).as_deref(),
                    &user.entries,
                )?;
                let record: Record = given
                    .into_iter()
                    .filter(|(f, _)| SecretFamily::from_name(f).is_some_and(|f| keep.contains(&f)))
                    .collect();
                table
                    .insert(k.as_str(), encode_record(&record)?.as_slice())
                    .map_err(|e| db_err("insert")(e.into()))?;
                Stored {
                    created: existing.is_none(),
                    families: families_of(&record),
                }
            };
            txn.commit().map_err(|e| db_err("commit")(e.into()))?;
            Ok(stored)
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
                out.push(UserSummary {
                    name: n.to_owned(),
                    realm: r.to_owned(),
                    families: families_of(&decode_record(v.value())?),
                });
            }
            Ok(out)
        })
        .await
    }

    /// Rewrite every entry `f` asks to, in batches of one write transaction
    /// each: readers go on meanwhile (MVCC) and writers wait one batch at most.
    pub async fn rewrite_all(&self, f: Rewrite) -> Result<(u64, u64), StoreError> {
        const BATCH: usize = 256;
        self.blocking(move |db| {
            let mut after: Option<String> = None;
            let (mut rewritten, mut unchanged) = (0u64, 0u64);
            loop {
                let txn = db
                    .begin_write()
                    .map_err(|e| db_err("begin write")(e.into()))?;
                let last = {
                    let mut table = txn
                        .open_table(USERS)
                        .map_err(|e| db_err("open table")(e.into()))?;
                    let mut batch = Vec::new();
                    {
                        let range = match &after {
                            Some(a) => table.range::<&str>((
                                std::ops::Bound::Excluded(a.as_str()),
                                std::ops::Bound::Unbounded,
                            )),
                            None => table.range::<&str>(..),
                        }
                        .map_err(|e| db_err("iterate")(e.into()))?;
                        for item in range.take(BATCH) {
                            let (k, v) = item.map_err(|e| db_err("iterate")(e.into()))?;
                            batch.push((k.value().to_owned(), decode_record(v.value())?));
                        }
                    }
                    for (k, mut record) in batch.iter().cloned() {
                        let Some((realm, name)) = k.split_once('\0') else {
                            continue;
                        };
                        let mut changed = false;
                        for (fam, v) in record.iter_mut() {
                            let Some(family) = SecretFamily::from_name(fam) else {
                                continue;
                            };
                            match f(realm, name, family, &entry_bytes(v)?)? {
                                Some(new) => {
                                    *v = serde_json::from_slice(&new).map_err(|e| {
                                        StoreError::Backend(format!("encode entry: {e}"))
                                    })?;
                                    changed = true;
                                    rewritten += 1;
                                }
                                None => unchanged += 1,
                            }
                        }
                        if changed {
                            table
                                .insert(k.as_str(), encode_record(&record)?.as_slice())
                                .map_err(|e| db_err("insert")(e.into()))?;
                        }
                    }
                    batch.last().map(|(k, _)| k.clone())
                };
                txn.commit().map_err(|e| db_err("commit")(e.into()))?;
                match last {
                    Some(k) => after = Some(k),
                    None => return Ok((rewritten, unchanged)),
                }
            }
        })
        .await
    }
}
