//! The PostgreSQL backend, for replicas and HA. One row per (realm, name,
//! family); a user's secrets are replaced in one transaction, so readers and
//! crashes see all old rows or all new ones.

use std::time::Duration;

use authrelay_sasl::SecretFamily;
use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls};

use super::{PutMode, RawUser, Rewrite, Stored, UserSummary};
use crate::StoreError;

/// Schema migrations, applied in order on start under an advisory lock so
/// replicas starting together do not race. Never edit one that shipped.
const MIGRATIONS: &[&str] = &["CREATE TABLE credentials (
        realm text NOT NULL,
        name text NOT NULL,
        family text NOT NULL,
        secret bytea NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (realm, name, family)
    )"];

/// Arbitrary constant identifying our migration lock.
const MIGRATION_LOCK: i64 = 0x6175_7468_7265_6c61;

pub struct PostgresBackend {
    url: String,
    schema: Option<String>,
    client: Mutex<Option<Client>>,
}

fn pg_err(what: &'static str) -> impl Fn(tokio_postgres::Error) -> StoreError {
    // The server's own message says what went wrong; "db error" alone does not.
    move |e| match e.as_db_error() {
        Some(db) => StoreError::Backend(format!("postgres {what}: {}", db.message())),
        None => StoreError::Backend(format!("postgres {what}: {e}")),
    }
}

impl PostgresBackend {
    /// Connect and migrate. `schema` (tests) puts the tables in their own
    /// schema, created if missing.
    pub async fn connect(url: &str, schema: Option<&str>) -> Result<Self, StoreError> {
        let backend = PostgresBackend {
            url: url.to_owned(),
            schema: schema.map(str::to_owned),
            client: Mutex::new(None),
        };
        backend.migrate().await?;
        Ok(backend)
    }

    async fn open(&self) -> Result<Client, StoreError> {
        let (client, conn) = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_postgres::connect(&self.url, NoTls),
        )
        .await
        .map_err(|_| StoreError::Backend("postgres connect: timed out".into()))?
        .map_err(pg_err("connect"))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::warn!(error = %e, "postgres connection closed");
            }
        });
        if let Some(schema) = &self.schema {
            let ident = schema.replace('"', "");
            client
                .batch_execute(&format!(
                    "CREATE SCHEMA IF NOT EXISTS \"{ident}\"; SET search_path TO \"{ident}\""
                ))
                .await
                .map_err(pg_err("schema"))?;
        }
        Ok(client)
    }

    /// The shared client, reconnecting when the old one died (PostgreSQL
    /// restarted): service resumes by itself.
    async fn client(&self) -> Result<tokio::sync::MutexGuard<'_, Option<Client>>, StoreError> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            *guard = Some(self.open().await?);
        }
        Ok(guard)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut guard = self.client().await?;
        let client = guard.as_mut().expect("connected above");
        let txn = client.transaction().await.map_err(pg_err("begin"))?;
        txn.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(pg_err("lock"))?;
        txn.batch_execute("CREATE TABLE IF NOT EXISTS authrelay_schema (version integer NOT NULL)")
            .await
            .map_err(pg_err("migrate"))?;
        let row = txn
            .query_opt("SELECT max(version) FROM authrelay_schema", &[])
            .await
            .map_err(pg_err("migrate"))?;
        let current: i32 = row.and_then(|r| r.get::<_, Option<i32>>(0)).unwrap_or(0);
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            txn.batch_execute(sql).await.map_err(pg_err("migrate"))?;
            txn.execute(
                "INSERT INTO authrelay_schema (version) VALUES ($1)",
                &[&(i as i32 + 1)],
            )
            .await
            .map_err(pg_err("migrate"))?;
        }
        txn.commit().await.map_err(pg_err("commit"))?;
        Ok(())
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let guard = self.client().await?;
        guard
            .as_ref()
            .expect("connected")
            .simple_query("SELECT 1")
            .await
            .map_err(pg_err("ping"))?;
        Ok(())
    }

    pub async fn get(
        &self,
        name: &str,
        realm: &str,
        family: SecretFamily,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let guard = self.client().await?;
        let row = guard
            .as_ref()
            .expect("connected")
            .query_opt(
                "SELECT secret FROM credentials WHERE realm = $1 AND name = $2 AND family = $3",
                &[&realm, &name, &family.name()],
            )
            .await
            .map_err(pg_err("select"))?;
        Ok(row.map(|r| r.get::<_, Vec<u8>>(0)))
    }

    pub async fn put(&self, user: RawUser, mode: PutMode) -> Result<Stored, StoreError> {
        let mut guard = self.client().await?;
        let client = guard.as_mut().expect("connected");
        let txn = client.transaction().await.map_err(pg_err("begin"))?;
        // Serialise writers of the same user, so reading its families and
        // replacing its rows is one step (PutMode::KeepFamilies).
        let key = format!("{}@{}", user.name, user.realm);
        txn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&key])
            .await
            .map_err(pg_err("lock"))?;
        let existing: Vec<SecretFamily> = txn
            .query(
                "DELETE FROM credentials WHERE realm = $1 AND name = $2 RETURNING family",
                &[&user.realm, &user.name],
            )
            .await
            .map_err(pg_err("delete"))?
            .iter()
            .filter_map(|r| SecretFamily::from_name(r.get::<_, &str>(0)))
            .collect();
        let existed = !existing.is_empty();
        // On error, dropping the transaction rolls the delete back.
        let keep = mode.families_to_store(existed.then_some(existing.as_slice()), &user.entries)?;
        for (family, entry) in user.entries.iter().filter(|(f, _)| keep.contains(f)) {
            txn.execute(
                "INSERT INTO credentials (realm, name, family, secret) VALUES ($1, $2, $3, $4)",
                &[&user.realm, &user.name, &family.name(), entry],
            )
            .await
            .map_err(pg_err("insert"))?;
        }
        txn.commit().await.map_err(pg_err("commit"))?;
        let mut families = keep;
        families.sort();
        Ok(Stored {
            created: !existed,
            families,
        })
    }

    /// Row by row, each update conditional on the entry being unchanged, so
    /// a password change racing the reseal is never overwritten.
    pub async fn rewrite_all(&self, f: Rewrite) -> Result<(u64, u64), StoreError> {
        let guard = self.client().await?;
        let client = guard.as_ref().expect("connected");
        let rows = client
            .query("SELECT realm, name, family, secret FROM credentials", &[])
            .await
            .map_err(pg_err("select"))?;
        let (mut rewritten, mut unchanged) = (0u64, 0u64);
        for row in rows {
            let (realm, name, fam, old): (String, String, String, Vec<u8>) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            let Some(family) = SecretFamily::from_name(&fam) else {
                continue;
            };
            match f(&realm, &name, family, &old)? {
                Some(new) => {
                    let n = client
                        .execute(
                            "UPDATE credentials SET secret = $5, updated_at = now() \
                             WHERE realm = $1 AND name = $2 AND family = $3 AND secret = $4",
                            &[&realm, &name, &fam, &old, &new],
                        )
                        .await
                        .map_err(pg_err("update"))?;
                    if n == 1 {
                        rewritten += 1;
                    }
                }
                None => unchanged += 1,
            }
        }
        Ok((rewritten, unchanged))
    }

    pub async fn delete_user(&self, name: &str, realm: &str) -> Result<(), StoreError> {
        let guard = self.client().await?;
        let n = guard
            .as_ref()
            .expect("connected")
            .execute(
                "DELETE FROM credentials WHERE realm = $1 AND name = $2",
                &[&realm, &name],
            )
            .await
            .map_err(pg_err("delete"))?;
        if n == 0 {
            Err(StoreError::NotFound)
        } else {
            Ok(())
        }
    }

    pub async fn list_users(&self, realm: Option<&str>) -> Result<Vec<UserSummary>, StoreError> {
        let guard = self.client().await?;
        let client = guard.as_ref().expect("connected");
        let rows = match realm {
            Some(r) => client
                .query(
                    "SELECT realm, name, family FROM credentials WHERE realm = $1 ORDER BY realm, name",
                    &[&r],
                )
                .await,
            None => client
                .query("SELECT realm, name, family FROM credentials ORDER BY realm, name", &[])
                .await,
        }
        .map_err(pg_err("list"))?;
        let mut out: Vec<UserSummary> = Vec::new();
        for row in rows {
            let (r, n, f): (String, String, String) = (row.get(0), row.get(1), row.get(2));
            let Some(family) = SecretFamily::from_name(&f) else {
                continue;
            };
            match out.last_mut() {
                Some(last) if last.realm == r && last.name == n => last.families.push(family),
                _ => out.push(UserSummary {
                    name: n,
                    realm: r,
                    families: vec![family],
                }),
            }
        }
        for u in &mut out {
            u.families.sort();
        }
        Ok(out)
    }
}
