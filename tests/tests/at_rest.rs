//! Data at rest, against a local attacker: another user with a shell on
//! the host. Whatever the umask the services start under (here `umask
//! 000`, the worst), everything they create for data is theirs alone —
//! directories 0700, files 0600 — and the credential database holds no
//! password-equivalent secret in the clear, even with no key configured:
//! the file backend seals with a key it generates apart from the
//! database. A PostgreSQL credential-store, whose database is shared
//! infrastructure, refuses to start without a key of the operator's.
//!
//! The binaries run through `sh -c 'umask 000; exec …'`, and each test
//! reads the umask back from /proc to be sure it took.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use authrelay_e2e::*;
use authrelay_sasl::{SecretFamily, SecretParams, StoredSecret, derive_secret};
use base64::Engine as _;
use serde_json::json;

const REALM: &str = "mailserver.foo.com";
const PASSWORD: &str = "at-rest-Secret-7";

/// `program` started with umask 000 (arguments go after it).
fn under_umask_000(program: &Path) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("umask 000; exec \"$0\" \"$@\"")
        .arg(program)
        .env("RUST_LOG", "info");
    cmd
}

fn assert_umask_000(p: &Proc) {
    let status = std::fs::read_to_string(format!("/proc/{}/status", p.pid())).unwrap();
    let umask = status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .map(str::trim);
    assert_eq!(
        umask,
        Some("0000"),
        "{} must run with umask 000 for this test to mean anything",
        p.name
    );
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Every directory under `root` (and `root`) is 0700, every regular file
/// 0600; sockets (admin sockets of `authrelay serve`) sit only in 0700
/// directories. No temporary `.new` file is left. Returns what it saw,
/// relative to `root`.
fn assert_private_tree(root: &Path) -> Vec<String> {
    let mut seen = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        assert_eq!(mode(&dir), 0o700, "directory {}", dir.display());
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let path = e.path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let ft = std::fs::symlink_metadata(&path).unwrap().file_type();
            assert!(!rel.ends_with(".new"), "temporary file left: {rel}");
            if ft.is_dir() {
                stack.push(path);
            } else if ft.is_file() {
                assert_eq!(mode(&path), 0o600, "file {rel}");
            } else {
                assert!(ft.is_socket(), "{rel}: neither file, directory nor socket");
            }
            seen.push(rel);
        }
    }
    seen.sort();
    seen
}

/// MD5 by Python's hashlib (not our code), hex.
fn python_md5_hex(text: &str) -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            "import hashlib, os; print(hashlib.md5(os.environ['T'].encode()).hexdigest())",
        ])
        .env("T", text)
        .output()
        .expect("python3 (scripts/test.sh installs it)");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn unhex(h: &str) -> Vec<u8> {
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
        .collect()
}

/// A form a secret could take in the file, and whether a clear record
/// (serde JSON, as stored before sealing was the default) holds it so.
struct Needle {
    what: String,
    bytes: Vec<u8>,
    in_clear_record: bool,
}

fn needle(what: String, bytes: Vec<u8>, in_clear_record: bool) -> Needle {
    Needle {
        what,
        bytes,
        in_clear_record,
    }
}

/// The shapes a 16-byte MD5 secret could take: raw, hex, base64, and the
/// JSON array serde writes for `[u8; 16]`.
fn shapes_of_bytes(label: &str, b: &[u8]) -> Vec<Needle> {
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(b);
    vec![
        needle(format!("{label} raw"), b.to_vec(), false),
        needle(format!("{label} hex"), hex.clone().into_bytes(), false),
        needle(
            format!("{label} HEX"),
            hex.to_uppercase().into_bytes(),
            false,
        ),
        needle(format!("{label} base64"), b64.into_bytes(), false),
        needle(
            format!("{label} json"),
            serde_json::to_vec(b).unwrap(),
            true,
        ),
    ]
}

/// Everything that would give away user `name`'s DIGEST-MD5 and CRAM-MD5
/// secrets (password-equivalent, RFC 2831 / RFC 2195) if stored in the
/// clear: HA1 = MD5(user:realm:password) for the bare and the qualified
/// name — computed by Python's hashlib — and the CRAM-MD5 HMAC contexts.
fn md5_secret_needles(name: &str, password: &str) -> Vec<Needle> {
    let mut needles = Vec::new();
    for user in [name.to_owned(), format!("{name}@{REALM}")] {
        let ha1 = unhex(&python_md5_hex(&format!("{user}:{REALM}:{password}")));
        needles.extend(shapes_of_bytes(&format!("HA1({user})"), &ha1));
    }
    // Our derivation agrees with hashlib on the bare HA1.
    let StoredSecret::DigestMd5 { ha1, .. } = derive_secret(
        SecretFamily::DigestMd5,
        name,
        REALM,
        password.as_bytes(),
        &SecretParams::default(),
    ) else {
        unreachable!()
    };
    assert_eq!(
        needles[0].bytes,
        ha1.to_vec(),
        "HA1 by hashlib and by authrelay-sasl"
    );
    let StoredSecret::CramMd5 { inner, outer } = derive_secret(
        SecretFamily::CramMd5,
        name,
        REALM,
        password.as_bytes(),
        &SecretParams::default(),
    ) else {
        unreachable!()
    };
    for (which, ctx) in [("inner", inner), ("outer", outer)] {
        let le: Vec<u8> = ctx.iter().flat_map(|w| w.to_le_bytes()).collect();
        let be: Vec<u8> = ctx.iter().flat_map(|w| w.to_be_bytes()).collect();
        needles.push(needle(
            format!("CRAM-MD5 {which} context json"),
            serde_json::to_vec(&ctx).unwrap(),
            true,
        ));
        needles.push(needle(format!("CRAM-MD5 {which} context LE"), le, false));
        needles.push(needle(format!("CRAM-MD5 {which} context BE"), be, false));
    }
    for tag in ["\"DigestMd5\"", "\"CramMd5\"", "\"ha1\""] {
        needles.push(needle(
            format!("clear record field {tag}"),
            tag.as_bytes().to_vec(),
            true,
        ));
    }
    needles.push(needle(
        "Argon2id PHC string".into(),
        b"$argon2id".to_vec(),
        false,
    ));
    needles
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The raw bytes of the credential database hold none of the user's
/// MD5-derived secrets. First, as a control, the needles are shown to
/// catch the clear records (as stored without sealing) they are meant to.
fn assert_no_clear_md5_secrets(db: &Path, name: &str, password: &str) {
    let needles = md5_secret_needles(name, password);
    let clear: Vec<u8> = [SecretFamily::DigestMd5, SecretFamily::CramMd5]
        .iter()
        .flat_map(|f| {
            let secret = derive_secret(
                *f,
                name,
                REALM,
                password.as_bytes(),
                &SecretParams::default(),
            );
            credential_store::Keyring::default()
                .seal(REALM, name, &secret)
                .unwrap()
        })
        .collect();
    for n in needles.iter().filter(|n| n.in_clear_record) {
        assert!(
            contains(&clear, &n.bytes),
            "control: a clear record does not hold {} so: {}",
            n.what,
            String::from_utf8_lossy(&clear)
        );
    }
    let bytes = std::fs::read(db).unwrap();
    assert!(bytes.len() > 4096, "a real database: {} bytes", bytes.len());
    for n in &needles {
        assert!(
            !contains(&bytes, &n.bytes),
            "{}: {} of {name} is in the file in the clear",
            db.display(),
            n.what
        );
    }
}

fn fast_hashing() -> &'static str {
    "argon2_memory_kib = 8192\nargon2_iterations = 1\n"
}

// ---------------------------------------------------------------------------

#[test]
fn serve_under_umask_000_keeps_its_data_dir_database_key_spool_and_certificate_private() {
    let dir = scratch("at-rest-serve");
    let data = dir.join("data");
    let config = dir.join("serve.toml");
    std::fs::write(
        &config,
        format!(
            "hostname = \"{REALM}\"\ndefault_realm = \"{REALM}\"\ndata_dir = \"{}\"\n\
             [credential_store]\n{}\
             [relay_queue]\ndelivery_mode = \"queue-only\"\n\
             [frontend]\nadmin_listen = \"127.0.0.1:0\"\n\
             [[frontend.listeners]]\naddress = \"127.0.0.1:0\"\nrole = \"submission\"\n",
            data.display(),
            fast_hashing()
        ),
    )
    .unwrap();
    assert!(!data.exists(), "a fresh data directory");
    let mut cmd = under_umask_000(&bin("authrelay"));
    cmd.arg("--config").arg(&config).arg("serve");
    let mut serve = Proc::spawn("authrelay serve", cmd, dir.join("serve.log"));
    let submission = serve.addr("smtp submission");
    assert_umask_000(&serve);

    let (ok, out, err) = run_authrelay(
        &config,
        &[],
        &["user", "add", "--realm", REALM, "test"],
        &format!("{PASSWORD}\n"),
    );
    assert!(ok, "user add: {out} {err}");
    // A message, queued and left in the spool (queue-only), then held so
    // its delivery state is written beside it.
    let res = smtplib(
        json!({"port": submission.port(), "starttls": true, "mech": "PLAIN",
               "user": format!("test@{REALM}"), "from": format!("test@{REALM}"),
               "to": ["someone@example.net"], "body": "Subject: private\r\n\r\nnot for other users\r\n"}),
        PASSWORD,
    );
    assert_eq!(res["auth"][0], 235, "{res}\n{}", serve.log_text());
    assert_eq!(res["send"]["ok"], true, "{res}");
    let queue = data.join("spool/queue");
    let id = std::fs::read_dir(&queue)
        .unwrap()
        .filter_map(|e| {
            let n = e.ok()?.file_name().to_string_lossy().into_owned();
            n.strip_suffix(".msg").map(str::to_owned)
        })
        .next()
        .unwrap_or_else(|| panic!("no message in {}", queue.display()));
    let (ok, out, err) = run_authrelay(&config, &[], &["queue", "hold", &id], "");
    assert!(ok, "queue hold: {out} {err}");

    let seen = assert_private_tree(&data);
    for want in [
        "credentials.redb".to_owned(),
        "keys".into(),
        "keys/credential-store.key".into(),
        "spool".into(),
        "spool/tmp".into(),
        "spool/queue".into(),
        format!("spool/queue/{id}.msg"),
        format!("spool/queue/{id}.state"),
        "tls".into(),
        "tls/key.pem".into(),
        "tls/cert.pem".into(),
        "run".into(),
    ] {
        assert!(seen.contains(&want), "{want} missing from {seen:?}");
    }
    assert!(
        serve
            .log_text()
            .contains("generated the key that seals stored secrets"),
        "the generated key is announced: {}",
        serve.log_text()
    );

    serve.signal("TERM");
    assert!(serve.wait_exit(Duration::from_secs(30)).is_some());
    assert_no_clear_md5_secrets(&data.join("credentials.redb"), "test", PASSWORD);
    assert!(
        !serve.log_text().contains(PASSWORD),
        "no password in the log"
    );
}

/// A config for credential-store on its own (file backend unless `extra`
/// says otherwise, no key configured unless `extra` does), with the
/// deployment's tokens.
fn creds_config(dir: &Path, extra: &str) -> PathBuf {
    let config = dir.join("creds.toml");
    let base = format!(
        "hostname = \"{REALM}\"\ndefault_realm = \"{REALM}\"\ndata_dir = \"{}\"\n\
         [sasl]\nsecret_cache_size = 0\n\
         [credential_store]\nlisten = \"127.0.0.1:0\"\n{}",
        dir.join("data").display(),
        fast_hashing(),
    );
    std::fs::write(
        &config,
        merge_toml(&base, &format!("{}\n{extra}", tokens_toml(dir))),
    )
    .unwrap();
    config
}

fn spawn_creds(dir: &Path, config: &Path, log: &str) -> (Proc, String) {
    let mut cmd = under_umask_000(&bin("credential-store"));
    cmd.arg("--config").arg(config);
    let mut p = Proc::spawn("credential-store", cmd, dir.join(log));
    let url = format!("http://{}", p.addr("grpc"));
    assert_umask_000(&p);
    (p, url)
}

/// credential-store on its own, file backend, no key configured, over a
/// data directory an older install left open to everyone.
#[test]
fn credential_store_under_umask_000_seals_with_a_private_generated_key_and_tightens_an_open_data_dir()
 {
    let dir = scratch("at-rest-creds");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
    let config = creds_config(&dir, "");
    let (mut creds, url) = spawn_creds(&dir, &config, "creds-1.log");
    let env = vec![("AUTHRELAY__ENDPOINTS__CREDENTIAL_STORE".to_owned(), url)];
    let (ok, out, err) = run_authrelay(
        &config,
        &env,
        &["user", "add", "--realm", REALM, "test"],
        &format!("{PASSWORD}\n"),
    );
    assert!(ok, "user add: {out} {err}");

    assert_eq!(mode(&data), 0o700, "the open data directory is tightened");
    assert!(
        creds.log_text().contains("tightened"),
        "and the log says so: {}",
        creds.log_text()
    );
    let key = data.join("keys/credential-store.key");
    let seen = assert_private_tree(&data);
    for want in ["credentials.redb", "keys", "keys/credential-store.key"] {
        assert!(seen.iter().any(|s| s == want), "{want} missing: {seen:?}");
    }
    let key_text = std::fs::read_to_string(&key).unwrap();
    assert_eq!(key_text.trim().len(), 64, "32 bytes as hex");

    // A restart reads the same key (never a new one) and opens what the
    // first run sealed.
    creds.signal("TERM");
    assert!(creds.wait_exit(Duration::from_secs(30)).is_some());
    assert_no_clear_md5_secrets(&data.join("credentials.redb"), "test", PASSWORD);
    let (creds2, url) = spawn_creds(&dir, &config, "creds-2.log");
    assert_eq!(std::fs::read_to_string(&key).unwrap(), key_text);
    assert!(
        !creds2
            .log_text()
            .contains("generated the key that seals stored secrets"),
        "{}",
        creds2.log_text()
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let found = rt.block_on(async {
        use authrelay_proto::credentials::v1 as cpb;
        let ch = tonic::transport::Endpoint::from_shared(url)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut c = cpb::credential_store_client::CredentialStoreClient::with_interceptor(
            ch,
            all_tokens(&dir),
        );
        let mut found = Vec::new();
        for family in [SecretFamily::DigestMd5, SecretFamily::CramMd5] {
            let r = c
                .get_secret(cpb::GetSecretRequest {
                    name: "test".into(),
                    realm: REALM.into(),
                    family: family.name().into(),
                })
                .await
                .unwrap()
                .into_inner();
            found.push(r.found && r.secret.is_some());
        }
        found
    });
    assert_eq!(found, [true, true], "{}", creds2.log_text());
}

// ---------------------------------------------------------------------------

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A fresh schema; the URL that lands a service in it.
fn postgres_schema(rt: &tokio::runtime::Runtime, name: &str) -> String {
    let schema = format!("authrelay_e2e_{name}_{}", std::process::id());
    rt.block_on(async {
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
    });
    let sep = if database_url().contains('?') {
        '&'
    } else {
        '?'
    };
    format!("{}{sep}options=-csearch_path%3D{schema}", database_url())
}

#[test]
fn postgres_credential_store_without_an_encryption_key_file_refuses_to_start_naming_the_key() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = postgres_schema(&rt, "nokey");
    let dir = scratch("at-rest-pg");
    let config = creds_config(
        &dir,
        &format!("[credential_store]\nbackend = \"postgres\"\ndatabase_url = \"{url}\"\n"),
    );
    let mut cmd = Command::new(bin("credential-store"));
    cmd.arg("--config").arg(&config).env("RUST_LOG", "info");
    let mut creds = Proc::spawn("credential-store", cmd, dir.join("pg-nokey.log"));
    let status = creds
        .wait_exit(Duration::from_secs(30))
        .expect("it must not start");
    assert!(!status.success(), "{status:?}");
    let log = creds.log_text();
    assert!(
        log.contains("credential_store.encryption_key_file") && log.contains("postgres"),
        "the refusal names the key: {log}"
    );
    assert!(!log.contains("listening on"), "nothing served: {log}");
    assert!(
        !dir.join("data/keys").exists(),
        "no key generated on local disk"
    );
    // `authrelay config check` says the same before any start.
    let (ok, out, err) = run_authrelay(&config, &[], &["config", "check"], "");
    assert!(!ok, "{out}");
    assert!(
        err.contains("credential_store.encryption_key_file"),
        "{err}"
    );

    // With a key it starts on the same database: the refusal was the key's.
    let key = token_file(&dir, "credential-store.key");
    let config = creds_config(
        &dir,
        &format!(
            "[credential_store]\nbackend = \"postgres\"\ndatabase_url = \"{url}\"\n\
             encryption_key_file = \"{}\"\n",
            key.display()
        ),
    );
    let mut cmd = Command::new(bin("credential-store"));
    cmd.arg("--config").arg(&config).env("RUST_LOG", "info");
    let mut creds = Proc::spawn("credential-store", cmd, dir.join("pg-key.log"));
    creds.addr("grpc");
}
