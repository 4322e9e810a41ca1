//! One behaviour suite, run against the embedded file database and a real
//! PostgreSQL (DATABASE_URL, default postgres://postgres@127.0.0.1:5432/test).
//! A missing PostgreSQL fails with instructions, never a silent skip.

use std::collections::BTreeMap;

use authrelay_sasl::{SecretFamily, SecretParams, derive_secret};

use super::*;
use crate::seal::Keyring;

pub(crate) fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

async fn raw_backends() -> Vec<Backend> {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("authrelay-cs-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let file = FileBackend::open(&dir.join("credentials.redb")).unwrap();
    let schema = format!("authrelay_test_{}_{n}", std::process::id());
    let pg = PostgresBackend::connect(&database_url(), Some(&schema))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "these tests need PostgreSQL at {} ({e}); run `scripts/test.sh`, which starts one, \
             or set DATABASE_URL",
                database_url()
            )
        });
    vec![Backend::File(file), Backend::Postgres(Box::new(pg))]
}

/// Every backend twice: storing secrets as they are, and sealed.
async fn backends() -> Vec<Store> {
    let mut out = Vec::new();
    for b in raw_backends().await {
        out.push(Store::new(b, Keyring::default()));
    }
    for b in raw_backends().await {
        out.push(Store::new(b, Keyring::with_key(&[42; 32], &[])));
    }
    out
}

fn label(s: &Store) -> String {
    format!("{} sealed={}", s.kind(), s.key_id().is_some())
}

fn quick_params() -> SecretParams {
    SecretParams {
        argon2_m_cost_kib: 8192,
        argon2_t_cost: 1,
        ..SecretParams::default()
    }
}

fn record(name: &str, realm: &str, password: &str, families: &[SecretFamily]) -> UserRecord {
    let secrets: BTreeMap<_, _> = families
        .iter()
        .map(|f| {
            (
                *f,
                derive_secret(*f, name, realm, password.as_bytes(), &quick_params()),
            )
        })
        .collect();
    UserRecord {
        name: name.into(),
        realm: realm.into(),
        secrets,
    }
}

#[tokio::test]
async fn put_then_get_each_family() {
    for b in backends().await {
        let rec = record("test", "mailserver.foo.com", "pw", &SecretFamily::ALL);
        assert!(
            b.put_user(rec.clone(), PutMode::Replace)
                .await
                .unwrap()
                .created,
            "{}: created",
            label(&b)
        );
        for f in SecretFamily::ALL {
            let got = b.get_secret("test", "mailserver.foo.com", f).await.unwrap();
            assert_eq!(got.as_ref(), rec.secrets.get(&f), "{}: {f:?}", label(&b));
        }
        assert_eq!(
            b.get_secret("test", "other.realm", SecretFamily::Password)
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            b.get_secret("nobody", "mailserver.foo.com", SecretFamily::Password)
                .await
                .unwrap(),
            None
        );
    }
}

#[tokio::test]
async fn replace_drops_families_not_given() {
    for b in backends().await {
        b.put_user(
            record("u", "r", "old", &SecretFamily::ALL),
            PutMode::Replace,
        )
        .await
        .unwrap();
        let created = b
            .put_user(
                record(
                    "u",
                    "r",
                    "new",
                    &[SecretFamily::Password, SecretFamily::ScramSha256],
                ),
                PutMode::Replace,
            )
            .await
            .unwrap()
            .created;
        assert!(!created, "{}: replace is not create", label(&b));
        assert_eq!(
            b.get_secret("u", "r", SecretFamily::CramMd5).await.unwrap(),
            None,
            "{}",
            label(&b)
        );
        assert_eq!(
            b.get_secret("u", "r", SecretFamily::DigestMd5)
                .await
                .unwrap(),
            None
        );
        let users = b.list_users(None).await.unwrap();
        assert_eq!(
            users[0].families,
            vec![SecretFamily::Password, SecretFamily::ScramSha256]
        );
    }
}

#[tokio::test]
async fn create_only_refuses_existing_and_changes_nothing() {
    for b in backends().await {
        let first = record("u", "r", "one", &[SecretFamily::Password]);
        b.put_user(first.clone(), PutMode::Create).await.unwrap();
        let err = b
            .put_user(
                record("u", "r", "two", &[SecretFamily::CramMd5]),
                PutMode::Create,
            )
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::AlreadyExists), "{}", label(&b));
        assert_eq!(
            b.get_secret("u", "r", SecretFamily::Password)
                .await
                .unwrap()
                .as_ref(),
            first.secrets.get(&SecretFamily::Password)
        );
    }
}

#[tokio::test]
async fn delete_and_list() {
    for b in backends().await {
        b.put_user(
            record("a", "r1", "p", &[SecretFamily::Password]),
            PutMode::Replace,
        )
        .await
        .unwrap();
        b.put_user(
            record("b", "r2", "p", &[SecretFamily::CramMd5]),
            PutMode::Replace,
        )
        .await
        .unwrap();
        let all: Vec<_> = b
            .list_users(None)
            .await
            .unwrap()
            .into_iter()
            .map(|u| (u.realm, u.name))
            .collect();
        assert_eq!(
            all,
            [("r1".to_owned(), "a".to_owned()), ("r2".into(), "b".into())],
            "{}",
            label(&b)
        );
        let r2 = b.list_users(Some("r2")).await.unwrap();
        assert_eq!(r2.len(), 1);
        b.delete_user("a", "r1").await.unwrap();
        assert!(matches!(
            b.delete_user("a", "r1").await,
            Err(StoreError::NotFound)
        ));
        assert_eq!(b.list_users(None).await.unwrap().len(), 1);
    }
}

fn all_derived(name: &str, realm: &str, password: &str) -> UserRecord {
    record(name, realm, password, &SecretFamily::ALL)
}

#[tokio::test]
async fn keep_families_replaces_only_the_families_the_user_has() {
    for b in backends().await {
        let only = [SecretFamily::Password, SecretFamily::ScramSha256];
        b.put_user(record("u", "r", "old", &only), PutMode::Create)
            .await
            .unwrap();
        let default = vec![SecretFamily::Password];
        let stored = b
            .put_user(
                all_derived("u", "r", "new"),
                PutMode::KeepFamilies {
                    default: default.clone(),
                },
            )
            .await
            .unwrap();
        assert_eq!(stored.families, only, "{}", label(&b));
        assert!(!stored.created);
        assert_eq!(
            b.get_secret("u", "r", SecretFamily::CramMd5).await.unwrap(),
            None,
            "{}: no MD5 secret appears on a password change",
            label(&b)
        );
        let Some(StoredSecret::Password { phc }) = b
            .get_secret("u", "r", SecretFamily::Password)
            .await
            .unwrap()
        else {
            panic!("{}: password hash kept", label(&b))
        };
        assert!(authrelay_sasl::verify_password(&phc, b"new"));
        // A user that does not exist yet gets the default.
        let stored = b
            .put_user(
                all_derived("fresh", "r", "pw"),
                PutMode::KeepFamilies { default },
            )
            .await
            .unwrap();
        assert!(stored.created);
        assert_eq!(stored.families, [SecretFamily::Password], "{}", label(&b));
    }
}

#[tokio::test]
async fn reseal_moves_every_secret_to_the_current_key() {
    for raw in raw_backends().await {
        let kind = raw.kind();
        let old = Store::new(raw, Keyring::with_key(&[1; 32], &[]));
        old.put_user(all_derived("a", "r", "pw"), PutMode::Create)
            .await
            .unwrap();
        old.put_user(all_derived("b", "r", "pw"), PutMode::Create)
            .await
            .unwrap();
        let Store { backend, .. } = old;
        // Rotation: the new key seals, the old one still opens.
        let rotated = Store::new(backend, Keyring::with_key(&[2; 32], &[[1; 32]]));
        assert!(
            rotated
                .get_secret("a", "r", SecretFamily::CramMd5)
                .await
                .unwrap()
                .is_some(),
            "{kind}: old key readable during rotation"
        );
        assert_eq!(rotated.reseal().await.unwrap(), (10, 0), "{kind}");
        assert_eq!(
            rotated.reseal().await.unwrap(),
            (0, 10),
            "{kind}: idempotent"
        );
        let Store { backend, .. } = rotated;
        let only_new = Store::new(backend, Keyring::with_key(&[2; 32], &[]));
        for f in SecretFamily::ALL {
            assert!(
                only_new.get_secret("b", "r", f).await.unwrap().is_some(),
                "{kind}: {f} opens with the new key alone"
            );
        }
        let Store { backend, .. } = only_new;
        let wrong = Store::new(backend, Keyring::with_key(&[3; 32], &[]));
        let err = wrong
            .get_secret("a", "r", SecretFamily::Password)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Sealing(_)), "{kind}: {err}");
        let Store { backend, .. } = wrong;
        let unsealed = Store::new(backend, Keyring::default());
        assert!(
            unsealed
                .get_secret("a", "r", SecretFamily::Password)
                .await
                .is_err(),
            "{kind}: without any key a sealed record fails closed"
        );
    }
}

#[tokio::test]
async fn sealed_entries_hold_no_secret_bytes() {
    for raw in raw_backends().await {
        let store = Store::new(raw, Keyring::with_key(&[9; 32], &[]));
        let rec = all_derived("u", "r", "pw");
        store.put_user(rec.clone(), PutMode::Create).await.unwrap();
        for (f, secret) in &rec.secrets {
            let entry = store.backend.get("u", "r", *f).await.unwrap().unwrap();
            let plain = serde_json::to_vec(secret).unwrap();
            let needle: Vec<u8> = match secret {
                StoredSecret::Password { phc } => phc.as_bytes().to_vec(),
                StoredSecret::DigestMd5 { ha1, .. } => ha1.to_vec(),
                _ => plain[plain.len() - 24..].to_vec(),
            };
            assert!(
                !entry.windows(needle.len()).any(|w| w == needle.as_slice()),
                "{}: {f} stored in the clear",
                store.kind()
            );
        }
    }
}

fn scratch_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("authrelay-cs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn names_in(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_new_file_database_appears_whole_and_a_torn_creation_is_discarded() {
    let dir = scratch_dir("create");
    let path = dir.join("credentials.redb");
    // What a creation killed midway left under the temporary name (with
    // this pid, as every start in a container has): garbage, not a database.
    let torn = dir.join(format!("credentials.redb.{}.new", std::process::id()));
    std::fs::write(&torn, b"redb header cut short").unwrap();
    let db = FileBackend::open(&path).unwrap();
    assert_eq!(
        names_in(&dir),
        ["credentials.redb"],
        "only the database is left"
    );
    let store = Store::new(Backend::File(db), Keyring::default());
    store
        .put_user(
            record(
                "torn",
                "example.org",
                "torn-Secret-1",
                &[SecretFamily::Password],
            ),
            PutMode::Create,
        )
        .await
        .unwrap();
    drop(store);
    // Reopened, it is the same database with the same user.
    let db = FileBackend::open(&path).unwrap();
    let users = Backend::File(db).list_users(None).await.unwrap();
    assert_eq!(users.len(), 1);
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_refused_and_left_as_it_is() {
    let dir = scratch_dir("garbage");
    let path = dir.join("credentials.redb");
    std::fs::write(&path, b"not a redb file at all, and maybe someone's data").unwrap();
    let err = FileBackend::open(&path).err().expect("garbage opened");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "the error names the file: {err}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"not a redb file at all, and maybe someone's data",
        "never overwritten"
    );
}

#[tokio::test]
async fn the_file_database_and_its_directory_are_private_new_or_found_open() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let root = scratch_dir("modes");
    // Missing directories are made 0700 and the file 0600 (the test
    // process's umask, 022 or so, would give 0755 and 0644).
    let path = root.join("data/db/credentials.redb");
    drop(FileBackend::open(&path).unwrap());
    assert_eq!(mode(&root.join("data")), 0o700);
    assert_eq!(mode(&root.join("data/db")), 0o700);
    assert_eq!(mode(&path), 0o600);
    // An install from before, left open to everyone, is tightened on open.
    let perm = |m| std::fs::Permissions::from_mode(m);
    std::fs::set_permissions(&path, perm(0o644)).unwrap();
    std::fs::set_permissions(root.join("data/db"), perm(0o755)).unwrap();
    drop(FileBackend::open(&path).unwrap());
    assert_eq!(mode(&root.join("data/db")), 0o700);
    assert_eq!(mode(&path), 0o600);
}
