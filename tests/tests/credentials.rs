//! The credential store end to end: the services as separate processes,
//! users managed with `authrelay user …`, logins through smtp-frontend and
//! sasl-auth with Python's smtplib (PLAIN, CRAM-MD5) and with our SASL
//! client over a raw socket (SCRAM-SHA-256), and the stored rows read
//! straight from the redb file and the PostgreSQL table.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use authrelay_e2e::*;
use authrelay_proto::credentials::v1 as cpb;
use authrelay_proto::credentials::v1::credential_store_client::CredentialStoreClient;
use authrelay_sasl::{
    ClientCredentials, ClientExchange, ClientStep, Mechanism, SecretFamily, SecretParams,
    StoredSecret, derive_scram_secret, derive_secret, verify_password,
};
use base64::Engine as _;
use serde_json::json;

const REALM: &str = "mailserver.foo.com";

/// No brute-force delays: these tests try wrong passwords on purpose.
const LIMITS: &str =
    "[sasl.limits]\nmax_failures_per_ip = 100000\nmax_failures_per_user = 100000\n";

struct Env {
    dir: PathBuf,
    _redis: Redis,
    stack: Stack,
    /// The config as the harness wrote it, before credential_store edits.
    base_config: String,
    /// The lines last added to `[credential_store]`.
    creds_lines: String,
}

fn start(name: &str, extra: &str) -> Env {
    let dir = scratch(name);
    let redis = Redis::start(&dir);
    let stack = Stack::start(
        &dir,
        &redis,
        StackOptions {
            extra_toml: format!("{LIMITS}\n{extra}"),
            ..Default::default()
        },
    );
    let base_config = std::fs::read_to_string(&stack.config).unwrap();
    Env {
        dir,
        _redis: redis,
        stack,
        base_config,
        creds_lines: String::new(),
    }
}

impl Env {
    fn creds_url(&self) -> String {
        self.stack
            .endpoints
            .iter()
            .find(|(k, _)| k == "AUTHRELAY__ENDPOINTS__CREDENTIAL_STORE")
            .unwrap()
            .1
            .clone()
    }

    /// Restart credential-store on its address with `lines` added to its
    /// `[credential_store]` section (the other services keep running).
    fn restart_creds(&mut self, lines: &str) {
        self.creds_lines = lines.to_owned();
        self.stop_creds();
        let text = merge_toml(&self.base_config, &format!("[credential_store]\n{lines}\n"));
        std::fs::write(&self.stack.config, text).unwrap();
        let addr = self.creds_url().trim_start_matches("http://").to_owned();
        let env = vec![("AUTHRELAY__CREDENTIAL_STORE__LISTEN".to_owned(), addr)];
        self.stack.creds = spawn_service("credential-store", &self.stack.config, &self.dir, &env);
        self.stack.creds.addr("grpc");
    }

    /// SIGTERM and wait: a clean stop leaves the redb file readable
    /// read-only (after a SIGKILL only a writer may repair it).
    fn stop_creds(&mut self) {
        self.stack.creds.signal("TERM");
        if self
            .stack
            .creds
            .wait_exit(Duration::from_secs(30))
            .is_none()
        {
            self.stack.creds.kill();
        }
    }

    fn redb_path(&self) -> PathBuf {
        self.dir.join("data").join("credentials.redb")
    }

    fn authrelay(&self, args: &[&str], stdin: &str) -> (bool, String, String) {
        self.stack.authrelay(args, stdin)
    }

    /// AUTH through the frontend with Python's smtplib (after STARTTLS); the reply code.
    fn smtplib_auth(&self, mech: &str, user: &str, password: &str) -> u16 {
        let res = smtplib(
            json!({"port": self.stack.submission.port(), "starttls": true, "mech": mech, "user": user}),
            password,
        );
        res["auth"][0]
            .as_u64()
            .unwrap_or_else(|| panic!("{mech} {user}: no AUTH reply: {res}")) as u16
    }

    /// SCRAM-SHA-256 through the frontend, our client over a raw socket; the final code.
    fn scram_auth(&self, user: &str, password: &str) -> u16 {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut raw = Raw::connect(self.stack.submission);
        let (code, ehlo) = raw.cmd("EHLO client.example");
        assert_eq!(code, 250);
        assert!(
            ehlo.contains("SCRAM-SHA-256"),
            "not offered before TLS: {ehlo}"
        );
        let mut client = ClientExchange::new(
            Mechanism::ScramSha256,
            ClientCredentials::new(user, password),
        )
        .unwrap();
        let first = client.initial_response().unwrap();
        let (mut code, mut text) = raw.cmd(&format!("AUTH SCRAM-SHA-256 {}", b64.encode(first)));
        while code == 334 {
            let challenge = b64.decode(text[4..].trim()).unwrap();
            match client.step(&challenge) {
                Ok(ClientStep::Respond(r)) => (code, text) = raw.cmd(&b64.encode(r)),
                Ok(ClientStep::Done) => (code, text) = raw.read(),
                // The server's proof did not verify: abort as RFC 4954 §4 says.
                Err(_) => (code, text) = raw.cmd("*"),
            }
        }
        code
    }
}

/// A client with no admin token. Call inside `rt` (a lazy channel needs a reactor).
fn grpc(url: &str) -> CredentialStoreClient<tonic::transport::Channel> {
    let ch = tonic::transport::Endpoint::from_shared(url.to_owned())
        .unwrap()
        .connect_lazy();
    CredentialStoreClient::new(ch)
}

/// As the administrator (and a service, for GetSecret) of the stack in `dir`.
fn grpc_admin(
    url: &str,
    dir: &std::path::Path,
) -> CredentialStoreClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, AllTokens>,
> {
    let ch = tonic::transport::Endpoint::from_shared(url.to_owned())
        .unwrap()
        .connect_lazy();
    CredentialStoreClient::with_interceptor(ch, all_tokens(dir))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The families stored for (name, realm) in the redb file, read with the
/// service stopped and the file opened read-only.
fn redb_families(
    path: &Path,
    name: &str,
    realm: &str,
) -> Option<BTreeMap<String, serde_json::Value>> {
    use redb::ReadableDatabase as _;
    const USERS: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("users_v1");
    let db = redb::ReadOnlyDatabase::open(path).unwrap();
    let txn = db.begin_read().unwrap();
    let table = txn.open_table(USERS).unwrap();
    let v = table.get(format!("{realm}\0{name}").as_str()).unwrap()?;
    Some(serde_json::from_slice(v.value()).unwrap())
}

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A fresh schema for one test; the URL the service should use to land in it.
fn postgres_schema(
    rt: &tokio::runtime::Runtime,
    name: &str,
) -> (tokio_postgres::Client, String, String) {
    let schema = format!("authrelay_e2e_{name}_{}", std::process::id());
    let client = rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&database_url(), tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "this test needs PostgreSQL at {} ({e}); run scripts/test.sh, which starts one, or set DATABASE_URL",
                    database_url()
                )
            });
        tokio::spawn(conn);
        client
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
            ))
            .await
            .unwrap();
        client
    });
    let sep = if database_url().contains('?') {
        '&'
    } else {
        '?'
    };
    let url = format!("{}{sep}options=-csearch_path%3D{schema}", database_url());
    (client, schema, url)
}

/// `[credential_store]` lines for the PostgreSQL backend at `url`, with
/// the encryption key it requires (64 hex digits in a 0600 file).
fn postgres_lines(env: &Env, url: &str) -> String {
    format!(
        "backend = \"postgres\"\ndatabase_url = \"{url}\"\nencryption_key_file = \"{}\"",
        token_file(&env.dir, "credential-store.key").display()
    )
}

fn pg_families(
    rt: &tokio::runtime::Runtime,
    c: &tokio_postgres::Client,
    schema: &str,
    name: &str,
) -> BTreeSet<String> {
    rt.block_on(c.query(
        &format!("SELECT family FROM {schema}.credentials WHERE realm = $1 AND name = $2"),
        &[&REALM, &name],
    ))
    .unwrap()
    .iter()
    .map(|r| r.get::<_, String>(0))
    .collect()
}

fn list_json(env: &Env, realm: Option<&str>) -> Vec<serde_json::Value> {
    let mut args = vec!["user", "list", "--json"];
    if let Some(r) = realm {
        args.extend(["--realm", r]);
    }
    let (ok, out, err) = env.authrelay(&args, "");
    assert!(ok, "user list: {out} {err}");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn mechs_of(list: &[serde_json::Value], user: &str) -> Vec<String> {
    list.iter()
        .find(|u| u["user"] == user)
        .unwrap_or_else(|| panic!("{user} not listed: {list:?}"))["mechanisms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_owned())
        .collect()
}

// ---------------------------------------------------------------------------
// Secrets per mechanism: no MD5 secret for a user without MD5 mechanisms.

fn md5_free_user_holds_no_md5_secret_and_only_its_mechanisms_work(env: &mut Env) {
    let (ok, out, err) = env.authrelay(
        &[
            "user",
            "add",
            "--realm",
            REALM,
            "--mech",
            "SCRAM-SHA-256,PLAIN",
            "nomd5",
        ],
        "first-Secret-1\n",
    );
    assert!(ok, "{out} {err}");
    env.stack.add_user("full", REALM, "full-Secret-1");
    let want = ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256", "PLAIN", "LOGIN"];
    assert_eq!(mechs_of(&list_json(env, None), "nomd5"), want);
    assert_eq!(
        mechs_of(&list_json(env, None), "full"),
        [
            "SCRAM-SHA-256-PLUS",
            "SCRAM-SHA-256",
            "SCRAM-SHA-1-PLUS",
            "SCRAM-SHA-1",
            "DIGEST-MD5",
            "CRAM-MD5",
            "PLAIN",
            "LOGIN"
        ]
    );
    // passwd without --mech keeps the user's mechanisms (it used to reset
    // them to the configured default, bringing MD5 secrets back).
    let (ok, out, err) = env.authrelay(
        &["user", "passwd", "--realm", REALM, "nomd5"],
        "second-Secret-2\n",
    );
    assert!(ok, "{out} {err}");
    assert!(
        out.contains("updated user: nomd5")
            && out.ends_with("mechs: SCRAM-SHA-256-PLUS SCRAM-SHA-256 PLAIN LOGIN\n"),
        "{out}"
    );
    assert_eq!(mechs_of(&list_json(env, None), "nomd5"), want);
    // The sasldblistusers lines say the same, one per mechanism.
    let (_, text, _) = env.authrelay(&["user", "list", "--realm", REALM], "");
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("user: nomd5 "))
        .collect();
    assert_eq!(
        lines,
        want.map(|m| format!("user: nomd5 realm: {REALM} mech: {m}"))
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
    );

    let user = format!("nomd5@{REALM}");
    assert_eq!(env.smtplib_auth("PLAIN", &user, "second-Secret-2"), 235);
    assert_eq!(env.smtplib_auth("PLAIN", &user, "first-Secret-1"), 535);
    assert_eq!(env.smtplib_auth("CRAM-MD5", &user, "second-Secret-2"), 535);
    assert_eq!(env.scram_auth(&user, "second-Secret-2"), 235);
    assert_eq!(env.scram_auth(&user, "first-Secret-1"), 535);
    // The control user, with every family, does CRAM-MD5.
    assert_eq!(
        env.smtplib_auth("CRAM-MD5", &format!("full@{REALM}"), "full-Secret-1"),
        235
    );
}

#[test]
fn user_without_md5_mechanisms_has_no_md5_secret_in_the_file_database() {
    let mut env = start("nomd5-file", "");
    md5_free_user_holds_no_md5_secret_and_only_its_mechanisms_work(&mut env);
    env.stop_creds();
    let rec = redb_families(&env.redb_path(), "nomd5", REALM).expect("stored");
    assert_eq!(
        rec.keys().collect::<Vec<_>>(),
        ["password", "scram-sha-256"],
        "families stored for nomd5"
    );
    let all = redb_families(&env.redb_path(), "full", REALM).expect("stored");
    assert_eq!(
        all.len(),
        5,
        "the control user holds every family: {:?}",
        all.keys()
    );
}

#[test]
fn user_without_md5_mechanisms_has_no_md5_secret_in_postgres() {
    let rt = runtime();
    let (pg, schema, url) = postgres_schema(&rt, "nomd5");
    let mut env = start("nomd5-pg", "");
    env.restart_creds(&postgres_lines(&env, &url));
    md5_free_user_holds_no_md5_secret_and_only_its_mechanisms_work(&mut env);
    assert_eq!(
        pg_families(&rt, &pg, &schema, "nomd5"),
        BTreeSet::from(["password".to_owned(), "scram-sha-256".to_owned()])
    );
    assert_eq!(pg_families(&rt, &pg, &schema, "full").len(), 5);
    assert!(
        redb_families(&env.redb_path(), "nomd5", REALM).is_none(),
        "written to PostgreSQL, not the file"
    );
}

// ---------------------------------------------------------------------------
// Atomic writes: kill -9 in the middle of a burst of password changes.

/// Which of `candidates` every stored family of the user was derived from;
/// panics on a mix.
fn password_behind(
    c: &mut CredentialStoreClient<
        tonic::service::interceptor::InterceptedService<tonic::transport::Channel, AllTokens>,
    >,
    rt: &tokio::runtime::Runtime,
    name: &str,
    candidates: [&str; 2],
) -> usize {
    let mut verdicts = Vec::new();
    for family in SecretFamily::ALL {
        let resp = rt
            .block_on(c.get_secret(cpb::GetSecretRequest {
                name: name.into(),
                realm: REALM.into(),
                family: family.name().into(),
            }))
            .unwrap()
            .into_inner();
        assert!(resp.found, "{name}: {family} missing after the crash");
        let kind = resp.secret.unwrap().kind.unwrap();
        let matches: Vec<usize> = candidates
            .iter()
            .enumerate()
            .filter(|(_, pw)| {
                let pw = pw.as_bytes();
                use cpb::secret::Kind;
                let p = SecretParams::default();
                match &kind {
                    Kind::Password(h) => verify_password(&h.phc, pw),
                    Kind::CramMd5(x) => {
                        let StoredSecret::CramMd5 { inner, outer } =
                            derive_secret(family, name, REALM, pw, &p)
                        else {
                            unreachable!()
                        };
                        x.inner == inner && x.outer == outer
                    }
                    Kind::DigestMd5(x) => {
                        let StoredSecret::DigestMd5 {
                            ha1, ha1_qualified, ..
                        } = derive_secret(family, name, REALM, pw, &p)
                        else {
                            unreachable!()
                        };
                        x.ha1 == ha1
                            && Some(x.ha1_qualified.as_slice())
                                == ha1_qualified.as_ref().map(|h| &h[..])
                    }
                    Kind::ScramSha1(x) | Kind::ScramSha256(x) => {
                        match derive_scram_secret(family, pw, &x.salt, x.iterations).unwrap() {
                            StoredSecret::ScramSha1 {
                                stored_key,
                                server_key,
                                ..
                            } => x.stored_key == stored_key && x.server_key == server_key,
                            StoredSecret::ScramSha256 {
                                stored_key,
                                server_key,
                                ..
                            } => x.stored_key == stored_key && x.server_key == server_key,
                            _ => unreachable!(),
                        }
                    }
                }
            })
            .map(|(i, _)| i)
            .collect();
        assert_eq!(
            matches.len(),
            1,
            "{name}: {family} matches {matches:?} of old/new"
        );
        verdicts.push(matches[0]);
    }
    assert!(
        verdicts.iter().all(|v| *v == verdicts[0]),
        "{name}: a mix of old and new secrets: {verdicts:?}"
    );
    verdicts[0]
}

fn kill_during_password_burst(env: &mut Env) {
    const USERS: usize = 40;
    let rt = runtime();
    let url = env.creds_url();
    let old = |i: usize| format!("old-Secret-{i}");
    let new = |i: usize| format!("new-Secret-{i}");
    rt.block_on(async {
        let mut c = grpc_admin(&url, &env.dir);
        for i in 0..USERS {
            c.put_user(cpb::PutUserRequest {
                name: format!("burst{i}"),
                realm: REALM.into(),
                password: old(i).into_bytes(),
                create_only: true,
                ..Default::default()
            })
            .await
            .unwrap();
        }
    });
    let acked = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..USERS)
        .map(|i| {
            let (url, acked, failed, pw) = (url.clone(), acked.clone(), failed.clone(), new(i));
            let dir = env.dir.clone();
            rt.spawn(async move {
                let r = grpc_admin(&url, &dir)
                    .put_user(cpb::PutUserRequest {
                        name: format!("burst{i}"),
                        realm: REALM.into(),
                        password: pw.into_bytes(),
                        keep_mechanisms: true,
                        ..Default::default()
                    })
                    .await;
                match r {
                    Ok(_) => acked.fetch_add(1, Ordering::SeqCst),
                    Err(_) => failed.fetch_add(1, Ordering::SeqCst),
                };
            })
        })
        .collect();
    // Kill once a quarter of the changes are acknowledged: the rest are in
    // flight, some deriving, some committing.
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked.load(Ordering::SeqCst) < USERS / 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    env.stack.creds.signal("KILL");
    assert!(
        env.stack.creds.wait_exit(Duration::from_secs(30)).is_some(),
        "SIGKILL ends it"
    );
    rt.block_on(async {
        for t in tasks {
            t.await.unwrap();
        }
    });
    let (acked, failed) = (acked.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    eprintln!("burst: {acked} of {USERS} changes acknowledged before SIGKILL, {failed} cut off");
    assert!(
        acked >= 1 && failed >= 1,
        "the kill must land mid-burst ({acked} acked, {failed} failed)"
    );

    // Restart on the same database and configuration.
    let lines = env.creds_lines.clone();
    env.restart_creds(&lines);
    let mut c = {
        let _in_runtime = rt.enter();
        grpc_admin(&env.creds_url(), &env.dir)
    };
    let mut which = Vec::new();
    for i in 0..USERS {
        let name = format!("burst{i}");
        which.push(password_behind(&mut c, &rt, &name, [&old(i), &new(i)]));
    }
    let changed = which.iter().filter(|w| **w == 1).count();
    eprintln!(
        "after restart: {changed} users have the new password, {} the old",
        USERS - changed
    );
    assert!(
        changed >= acked,
        "every acknowledged change survived the kill"
    );
    // Through the real stack: the password the store holds works, the other does not.
    let unchanged = which.iter().position(|w| *w == 0);
    let updated = which.iter().position(|w| *w == 1).unwrap();
    for i in [Some(updated), unchanged].into_iter().flatten() {
        let (good, bad) = if which[i] == 1 {
            (new(i), old(i))
        } else {
            (old(i), new(i))
        };
        let user = format!("burst{i}@{REALM}");
        assert_eq!(env.smtplib_auth("PLAIN", &user, &good), 235, "{user}");
        assert_eq!(env.smtplib_auth("PLAIN", &user, &bad), 535, "{user}");
        assert_eq!(env.smtplib_auth("CRAM-MD5", &user, &good), 235, "{user}");
        assert_eq!(env.smtplib_auth("CRAM-MD5", &user, &bad), 535, "{user}");
    }
}

#[test]
fn sigkill_mid_password_burst_leaves_each_user_old_or_new_in_the_file_database() {
    let mut env = start("burst-file", "");
    kill_during_password_burst(&mut env);
}

#[test]
fn sigkill_mid_password_burst_leaves_each_user_old_or_new_in_postgres() {
    let rt = runtime();
    let (_pg, _schema, url) = postgres_schema(&rt, "burst");
    let mut env = start("burst-pg", "");
    env.restart_creds(&postgres_lines(&env, &url));
    kill_during_password_burst(&mut env);
}

// ---------------------------------------------------------------------------
// Admin calls need the admin token; sasl-auth, holding it, still works.

#[test]
fn admin_calls_without_the_token_are_unauthenticated_and_write_nothing() {
    let dir = scratch("admin-token-files");
    let token = dir.join("admin.token");
    std::fs::write(&token, "Zq3v9k0e8l1m2n3o4p5q6r7s8t9u0v1w\n").unwrap();
    let mut env = start(
        "admin-token",
        &format!("[admin]\ntoken_file = \"{}\"\n", token.display()),
    );
    env.stack.add_user("test", REALM, "tanstaaf-Secret-42");
    let (ok, out, err) = env.authrelay(&["user", "list"], "");
    assert!(
        ok && out.contains("user: test realm: mailserver.foo.com mech: PLAIN"),
        "{out} {err}"
    );
    // sasl-auth reads the same token file and still fetches secrets.
    assert_eq!(
        env.smtplib_auth("PLAIN", &format!("test@{REALM}"), "tanstaaf-Secret-42"),
        235
    );

    // The CLI with no token and with a wrong one.
    let no_token = dir.join("no-token.toml");
    let without: Vec<&str> = env
        .base_config
        .lines()
        .filter(|l| !l.trim_start().starts_with("token_file"))
        .collect();
    std::fs::write(&no_token, without.join("\n")).unwrap();
    let wrong = dir.join("wrong.token");
    std::fs::write(&wrong, "not-the-token-but-long-enough-0000\n").unwrap();
    let wrong_cfg = dir.join("wrong-token.toml");
    std::fs::write(
        &wrong_cfg,
        env.base_config
            .replace(&token.display().to_string(), &wrong.display().to_string()),
    )
    .unwrap();
    for cfg in [&no_token, &wrong_cfg] {
        for (args, stdin) in [
            (vec!["user", "list"], ""),
            (
                vec!["user", "add", "--realm", REALM, "intruder"],
                "x-Secret-1\n",
            ),
            (
                vec!["user", "passwd", "--realm", REALM, "test"],
                "x-Secret-1\n",
            ),
            (vec!["user", "delete", "--realm", REALM, "test"], ""),
            (vec!["user", "reseal"], ""),
        ] {
            let (ok, out, err) = run_authrelay(cfg, &env.stack.endpoints, &args, stdin);
            assert!(!ok, "{args:?} with {}: {out}", cfg.display());
            assert!(
                err.contains("admin credential missing or wrong")
                    && err.contains("admin.token_file"),
                "{args:?}: a clear message: {err}"
            );
        }
    }
    // Every RPC, straight over gRPC without the token.
    let rt = runtime();
    let mut c = {
        let _in_runtime = rt.enter();
        grpc(&env.creds_url())
    };
    rt.block_on(async {
        let codes = [
            c.get_secret(cpb::GetSecretRequest {
                name: "test".into(),
                realm: REALM.into(),
                family: "password".into(),
            })
            .await
            .map(|_| ()),
            c.put_user(cpb::PutUserRequest {
                name: "intruder".into(),
                realm: REALM.into(),
                password: b"x-Secret-1".to_vec(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
            c.delete_user(cpb::DeleteUserRequest {
                name: "test".into(),
                realm: REALM.into(),
            })
            .await
            .map(|_| ()),
            c.list_users(cpb::ListUsersRequest::default())
                .await
                .map(|_| ()),
            c.import_user(cpb::ImportUserRequest {
                name: "intruder".into(),
                realm: REALM.into(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
            c.reseal(cpb::ResealRequest {}).await.map(|_| ()),
        ];
        for (i, r) in codes.into_iter().enumerate() {
            assert_eq!(
                r.unwrap_err().code(),
                tonic::Code::Unauthenticated,
                "rpc #{i}"
            );
        }
    });
    let users = list_json(&env, None);
    assert_eq!(
        users.len(),
        1,
        "nothing written, nothing deleted: {users:?}"
    );
    assert_eq!(
        env.smtplib_auth("PLAIN", &format!("test@{REALM}"), "tanstaaf-Secret-42"),
        235
    );
    env.stop_creds();
}

// ---------------------------------------------------------------------------
// Migration in: Dovecot passwd-file and Cyrus sasldb2 dumps.

/// Dovecot's `{SCRAM-SHA-256}` value for a password, computed by Python's
/// hashlib/hmac (RFC 5802 §3), not by our code.
fn python_dovecot_scram(password: &str) -> String {
    let script = r#"
import base64, hashlib, hmac, os
pw = os.environ["PW"].encode(); salt = b"0123456789abcdef"; it = 4096
sp = hashlib.pbkdf2_hmac("sha256", pw, salt, it)
ck = hmac.new(sp, b"Client Key", "sha256").digest()
b = lambda x: base64.b64encode(x).decode()
print(f"{it},{b(salt)},{b(hashlib.sha256(ck).digest())},{b(hmac.new(sp, b'Server Key', 'sha256').digest())}")
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .env("PW", password)
        .output()
        .expect("python3 (scripts/test.sh installs it)");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn imported_dovecot_and_sasldb_users_log_in_with_their_old_passwords() {
    let mut env = start("import", "");
    let dovecot = env.dir.join("dovecot.passwd");
    std::fs::write(
        &dovecot,
        format!(
            "# Dovecot passwd-file\n\
             dove1@{REALM}:{{PLAIN}}dove-Pass-1:1000:1000::/home/dove1::\n\
             loulou@{REALM}:{{CRAM-MD5}}017ec858afebdc0a0bf7ab508169465750335f608ae201ca22b333b0aaa84f3a:::::\n\
             scrammy@{REALM}:{{SCRAM-SHA-256}}{}\n\
             cryptic@{REALM}:{{SHA512-CRYPT}}$6$rounds=5000$abcdefgh$0123456789\n\
             bare:{{CLEAR}}bare-Pass-1\n",
            python_dovecot_scram("scram-Pass-1")
        ),
    )
    .unwrap();
    let (ok, out, err) = env.authrelay(
        &[
            "user",
            "import",
            "--format",
            "dovecot",
            dovecot.to_str().unwrap(),
        ],
        "",
    );
    assert!(ok, "{out} {err}");
    assert!(out.contains("4 imported, 1 skipped"), "{out}");
    assert!(
        out.contains("skipped line 5 (cryptic@mailserver.foo.com): scheme {SHA512-CRYPT}"),
        "{out}"
    );
    assert!(
        out.contains("imported user: loulou realm: mailserver.foo.com mechs: CRAM-MD5\n"),
        "{out}"
    );
    assert!(
        !out.contains("dove-Pass-1") && !err.contains("dove-Pass-1"),
        "no password printed"
    );

    // db_dump -p of a sasldb2 (keys user\0realm\0property) and the listing form.
    let sasldb = env.dir.join("sasldb2.txt");
    std::fs::write(
        &sasldb,
        format!(
            "VERSION=3\nformat=print\ntype=hash\nh_nelem=2\ndb_pagesize=4096\nHEADER=END\n \
             cyrus1\\00{REALM}\\00userPassword\n cyrus-Pass-1\n \
             cyrus1\\00{REALM}\\00cmusaslsecretOTP\n 0123\nDATA=END\n"
        ),
    )
    .unwrap();
    let (ok, out, err) = env.authrelay(
        &[
            "user",
            "import",
            "--format",
            "sasldb",
            sasldb.to_str().unwrap(),
        ],
        "",
    );
    assert!(ok, "{out} {err}");
    assert!(
        out.contains("1 imported, 1 skipped")
            && out.contains("property cmusaslsecretOTP is not a password"),
        "{out}"
    );
    let listing = env.dir.join("sasldblistusers.txt");
    std::fs::write(
        &listing,
        format!("cyrus2@{REALM}: userPassword: cyrus-Pass-2\ncyrus3@{REALM}: userPassword\ncyrus1@{REALM}: userPassword: again\n"),
    )
    .unwrap();
    let (ok, out, err) = env.authrelay(
        &[
            "user",
            "import",
            "--format",
            "sasldb",
            listing.to_str().unwrap(),
        ],
        "",
    );
    assert!(ok, "{out} {err}");
    assert!(out.contains("1 imported, 2 skipped"), "{out}");
    assert!(
        out.contains("(cyrus3@mailserver.foo.com): no password in this listing"),
        "{out}"
    );
    assert!(
        out.contains("(cyrus1@mailserver.foo.com): exists already (use --replace)"),
        "{out}"
    );

    let at = |n: &str| format!("{n}@{REALM}");
    for (user, pw) in [
        ("dove1", "dove-Pass-1"),
        ("cyrus1", "cyrus-Pass-1"),
        ("cyrus2", "cyrus-Pass-2"),
        ("bare", "bare-Pass-1"),
    ] {
        assert_eq!(env.smtplib_auth("PLAIN", &at(user), pw), 235, "{user}");
        assert_eq!(env.smtplib_auth("CRAM-MD5", &at(user), pw), 235, "{user}");
    }
    assert_eq!(
        env.smtplib_auth("PLAIN", &at("cyrus1"), "again"),
        535,
        "not replaced"
    );
    // A stored CRAM-MD5 context gives CRAM-MD5 and nothing else.
    assert_eq!(env.smtplib_auth("CRAM-MD5", &at("loulou"), "tprzo.40"), 235);
    assert_eq!(env.smtplib_auth("CRAM-MD5", &at("loulou"), "tprzo.41"), 535);
    assert_eq!(env.smtplib_auth("PLAIN", &at("loulou"), "tprzo.40"), 535);
    // Imported SCRAM keys.
    assert_eq!(env.scram_auth(&at("scrammy"), "scram-Pass-1"), 235);
    assert_eq!(env.scram_auth(&at("scrammy"), "scram-Pass-2"), 535);
    let list = list_json(&env, None);
    assert_eq!(
        mechs_of(&list, "scrammy"),
        ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
    );
    assert!(!list.iter().any(|u| u["user"] == "cryptic"));
    env.stop_creds();
}

// ---------------------------------------------------------------------------
// Bad input: refused with the reason, nothing written.

#[test]
fn bad_names_realms_and_passwords_are_refused_with_the_reason_and_nothing_written() {
    let mut env = start("bad-input", "");
    env.restart_creds(&format!("realms = [\"{REALM}\"]"));
    let long_name = "n".repeat(256);
    let long_pw = format!("{}\n", "p".repeat(1025));
    let cases: Vec<(Vec<&str>, &str, &str)> = vec![
        (
            vec!["user", "add", "--realm", REALM, ""],
            "pw-Secret-1\n",
            "invalid user name: empty",
        ),
        (
            vec!["user", "add", "--realm", REALM, &long_name],
            "pw-Secret-1\n",
            "invalid user name: longer than 255 bytes",
        ),
        (
            vec!["user", "add", "--realm", REALM, "bell\u{7}name"],
            "pw-Secret-1\n",
            "invalid user name: contains a control character",
        ),
        (
            vec!["user", "add", "--realm", REALM, "user@other.example"],
            "pw-Secret-1\n",
            "invalid user name: contains '@'",
        ),
        (
            vec!["user", "add", "--realm", "unlisted.example", "someone"],
            "pw-Secret-1\n",
            "invalid realm: not one of credential_store.realms",
        ),
        (
            vec!["user", "add", "--realm", "", "someone"],
            "pw-Secret-1\n",
            "invalid realm: empty",
        ),
        (
            vec!["user", "add", "--realm", REALM, "someone"],
            &long_pw,
            "invalid password: longer than 1024 bytes",
        ),
        (
            vec!["user", "add", "--realm", REALM, "someone"],
            "\n",
            "invalid password: empty",
        ),
        (
            vec![
                "user", "add", "--realm", REALM, "--mech", "ROT13", "someone",
            ],
            "pw-Secret-1\n",
            "unknown or password-less mechanism",
        ),
    ];
    for (args, stdin, reason) in &cases {
        let (ok, out, err) = env.authrelay(args, stdin);
        assert!(!ok, "{args:?} accepted: {out}");
        assert!(err.contains(reason), "{args:?}: want {reason:?} in {err:?}");
        assert!(!err.contains("pppppppp"), "the password is not echoed");
    }
    assert!(list_json(&env, None).is_empty(), "nothing written");
    // A good one still goes in.
    env.stack.add_user("someone", REALM, "pw-Secret-1");
    assert_eq!(list_json(&env, None).len(), 1);
    env.stop_creds();
}

// ---------------------------------------------------------------------------
// Encryption at rest.

#[test]
fn sealed_secrets_hold_no_plaintext_reseal_rotates_keys_and_a_wrong_key_fails_closed() {
    let mut env = start("sealed", "");
    let k1 = env.dir.join("key1");
    let k2 = env.dir.join("key2");
    std::fs::write(&k1, "6a".repeat(32) + "\n").unwrap();
    std::fs::write(
        &k2,
        base64::engine::general_purpose::STANDARD.encode([0x5cu8; 32]),
    )
    .unwrap();
    env.restart_creds(&format!("encryption_key_file = \"{}\"", k1.display()));
    env.stack.add_user("sealed", REALM, "sealed-Secret-1");
    let user = format!("sealed@{REALM}");
    assert_eq!(env.smtplib_auth("PLAIN", &user, "sealed-Secret-1"), 235);
    assert_eq!(env.smtplib_auth("CRAM-MD5", &user, "sealed-Secret-1"), 235);

    // The stored rows: sealed boxes only; no PHC string, no secret field names.
    env.stop_creds();
    let rec = redb_families(&env.redb_path(), "sealed", REALM).unwrap();
    assert_eq!(rec.len(), 5);
    for (family, v) in &rec {
        assert!(
            v["sealed"]["kid"].is_string() && v["sealed"]["ct"].is_string(),
            "{family}: {v}"
        );
        let text = v.to_string();
        for leak in ["argon2", "stored_key", "ha1", "inner", "phc"] {
            assert!(!text.contains(leak), "{family} stored in the clear: {text}");
        }
    }
    let file = std::fs::read(env.redb_path()).unwrap();
    assert!(
        !file.windows(9).any(|w| w == b"$argon2id"),
        "no PHC string anywhere in the file"
    );
    let kid1 = rec["password"]["sealed"]["kid"]
        .as_str()
        .unwrap()
        .to_owned();

    // Rotation: new key seals, old key still opens, so no login fails meanwhile.
    env.restart_creds(&format!(
        "encryption_key_file = \"{}\"\nencryption_old_key_files = [\"{}\"]",
        k2.display(),
        k1.display()
    ));
    assert_eq!(env.smtplib_auth("PLAIN", &user, "sealed-Secret-1"), 235);
    let (ok, out, err) = env.authrelay(&["user", "reseal"], "");
    assert!(ok, "{out} {err}");
    assert!(
        out.starts_with("resealed 5 secret(s), 0 already current; key id: "),
        "{out}"
    );
    let (_, again, _) = env.authrelay(&["user", "reseal"], "");
    assert!(
        again.starts_with("resealed 0 secret(s), 5 already current"),
        "{again}"
    );
    env.stop_creds();
    let rec = redb_families(&env.redb_path(), "sealed", REALM).unwrap();
    assert!(
        rec.values()
            .all(|v| v["sealed"]["kid"].as_str() != Some(&kid1)),
        "all moved off key 1"
    );

    // The new key alone opens everything.
    env.restart_creds(&format!("encryption_key_file = \"{}\"", k2.display()));
    assert_eq!(env.smtplib_auth("PLAIN", &user, "sealed-Secret-1"), 235);
    assert_eq!(env.scram_auth(&user, "sealed-Secret-1"), 235);

    // The retired key alone opens nothing: AUTH fails, never succeeds.
    env.restart_creds(&format!("encryption_key_file = \"{}\"", k1.display()));
    let code = env.smtplib_auth("PLAIN", &user, "sealed-Secret-1");
    assert!(
        code == 454 || code == 535,
        "wrong key must fail closed, got {code}"
    );
    assert!(
        env.stack
            .creds
            .log_text()
            .contains("sealed with unknown key id"),
        "the store says why: {}",
        env.stack.creds.log_text()
    );
    assert!(
        !env.stack.logs().contains("sealed-Secret-1"),
        "no password in any log"
    );
    env.stop_creds();
}
