//! One behaviour suite, run against the embedded file database and a real
//! PostgreSQL (DATABASE_URL, default postgres://postgres@127.0.0.1:5432/test).
//! A missing PostgreSQL fails with instructions, never a silent skip.

use std::collections::BTreeMap;

use authrelay_sasl::{SecretFamily, SecretParams, derive_secret};

use super::*;

pub(crate) fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

async fn backends() -> Vec<Backend> {
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
            b.put_user(rec.clone(), false).await.unwrap(),
            "{}: created",
            b.kind()
        );
        for f in SecretFamily::ALL {
            let got = b.get_secret("test", "mailserver.foo.com", f).await.unwrap();
            assert_eq!(got.as_ref(), rec.secrets.get(&f), "{}: {f:?}", b.kind());
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
        b.put_user(record("u", "r", "old", &SecretFamily::ALL), false)
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
                false,
            )
            .await
            .unwrap();
        assert!(!created, "{}: replace is not create", b.kind());
        assert_eq!(
            b.get_secret("u", "r", SecretFamily::CramMd5).await.unwrap(),
            None,
            "{}",
            b.kind()
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
        b.put_user(first.clone(), true).await.unwrap();
        let err = b
            .put_user(record("u", "r", "two", &[SecretFamily::CramMd5]), true)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::AlreadyExists), "{}", b.kind());
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
        b.put_user(record("a", "r1", "p", &[SecretFamily::Password]), false)
            .await
            .unwrap();
        b.put_user(record("b", "r2", "p", &[SecretFamily::CramMd5]), false)
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
            b.kind()
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
