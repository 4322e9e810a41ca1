//! Encryption at rest. Every secret is sealed with ChaCha20-Poly1305
//! (RFC 8439) before it reaches a backend, under the key of
//! `credential_store.encryption_key_file` — or, when that is unset and the
//! backend is the embedded file, under a key the store generates on its
//! first start into `DATA_DIR/keys/credential-store.key`, apart from the
//! database. PostgreSQL, a shared server, takes only a configured key. The
//! associated data binds a sealed secret to its (realm, name, family): a
//! database writer without the key cannot move one user's secret onto
//! another user or another family. Each record carries the id of its key,
//! so old keys stay readable while `authrelay user reseal` moves
//! everything to the current one.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use authrelay_config::{Config, CredentialBackend};
use authrelay_sasl::{SecretFamily, StoredSecret};
use authrelay_telemetry::private_fs;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use rand::RngCore as _;
use sha2::{Digest, Sha256};

use crate::StoreError;

/// One stored entry: a sealed box, or (encryption off) the secret itself.
#[derive(serde::Serialize)]
#[serde(untagged)]
enum Entry {
    Sealed { sealed: SealedBox },
    Plain(StoredSecret),
}

impl Entry {
    /// Decode a stored entry. Not through the untagged derive: that buffers
    /// the whole record into serde's generic `Content` tree and then tries
    /// each variant, which was most of credential-store's CPU per GetSecret.
    /// Each attempt here fails at the record's first key, so trying the two
    /// forms in turn costs next to nothing.
    fn decode(bytes: &[u8]) -> Result<Entry, StoreError> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct SealedOnly {
            sealed: SealedBox,
        }
        match serde_json::from_slice::<StoredSecret>(bytes) {
            Ok(secret) => Ok(Entry::Plain(secret)),
            Err(plain_err) => serde_json::from_slice::<SealedOnly>(bytes)
                .map(|s| Entry::Sealed { sealed: s.sealed })
                .map_err(|_| malformed(&plain_err)),
        }
    }
}

/// A record that does not decode. Not serde's message: that can quote the
/// value it choked on (`invalid type: string "…"`), which here is a secret.
fn malformed(e: &serde_json::Error) -> StoreError {
    StoreError::Backend(format!(
        "decode secret: malformed record ({:?} error at column {})",
        e.classify(),
        e.column()
    ))
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SealedBox {
    /// Key id: the first 8 bytes of SHA-256 over a label and the key, hex.
    kid: String,
    nonce: String,
    ct: String,
}

struct Key {
    id: String,
    cipher: ChaCha20Poly1305,
}

impl Key {
    fn from_bytes(bytes: &[u8; 32]) -> Key {
        let mut h = Sha256::new();
        h.update(b"authrelay credential key id v1\0");
        h.update(bytes);
        Key {
            id: hex::encode(&h.finalize()[..8]),
            cipher: ChaCha20Poly1305::new(bytes.into()),
        }
    }
}

/// The keys a credential-store knows: one to seal with, any number to open with.
#[derive(Default)]
pub struct Keyring {
    current: Option<Key>,
    old: Vec<Key>,
    allow_unsealed: bool,
    /// An unsealed record was read and said so in the log (once a process).
    told_unsealed: AtomicBool,
}

/// Where a credential-store keeps the key it generated itself (no
/// `credential_store.encryption_key_file`, file backend): in a 0700
/// directory of its own beside the database, so a copy of the database
/// file alone holds no readable secret.
pub fn generated_key_path(cfg: &Config) -> PathBuf {
    cfg.data_dir.join("keys").join("credential-store.key")
}

/// The key in `path`, generated first when the file does not exist: 32
/// random bytes as 64 hex digits, in a 0600 file in a 0700 directory,
/// whatever the umask. Written under a temporary name, synced and linked
/// into place, so a crash never leaves half a key under the real name,
/// and an existing key is never replaced.
pub fn load_or_generate_key(path: &Path) -> Result<[u8; 32], anyhow::Error> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let io = |what: &str, e: std::io::Error| anyhow::anyhow!("{what} {}: {e}", path.display());
    private_fs::private_dir(dir).map_err(|e| io("the directory of", e))?;
    if !path.exists() {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".{}.new", std::process::id()));
        let tmp = PathBuf::from(tmp);
        // Left by a start killed midway with the same pid (in a container
        // that is always 1): never a key anything was sealed with.
        let _ = std::fs::remove_file(&tmp);
        {
            let mut f = private_fs::create_private_file(&tmp).map_err(|e| io("create", e))?;
            f.write_all(format!("{}\n", hex::encode(key)).as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| io("write", e))?;
        }
        let linked = match std::fs::hard_link(&tmp, path) {
            Ok(()) => true,
            // Someone made it meanwhile: theirs stands, ours goes.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
            // A volume without hard links: rename, as atomic, only without
            // the never-replace guarantee.
            Err(_) if !path.exists() => {
                std::fs::rename(&tmp, path).map_err(|e| io("rename into", e))?;
                true
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(io("link", e));
            }
        };
        let _ = std::fs::remove_file(&tmp);
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("sync the directory of", e))?;
        if linked {
            tracing::warn!(
                key_file = %path.display(),
                "generated the key that seals stored secrets (no credential_store.encryption_key_file): \
                 back it up apart from the database, which cannot be read without it"
            );
        }
    }
    private_fs::private_file(path).map_err(|e| io("", e))?;
    read_key_file(path)
}

/// Why a PostgreSQL credential-store will not start without a key.
pub const POSTGRES_NEEDS_KEY: &str = "credential_store.encryption_key_file is required when \
     credential_store.backend = \"postgres\": secrets in a shared database are sealed with a key \
     you provide (32 random bytes as hex or base64, e.g. `head -c32 /dev/urandom | base64`), never \
     one generated on a pod's local disk, which would be lost with it";

/// A key file: 32 bytes as 64 hex digits or base64, surrounding white space ignored.
pub fn read_key_file(path: &Path) -> Result<[u8; 32], anyhow::Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("key file {}: {e}", path.display()))?;
    parse_key(text.trim()).ok_or_else(|| {
        anyhow::anyhow!(
            "key file {}: not 32 bytes as hex (64 digits) or base64 (make one with `head -c32 /dev/urandom | base64`)",
            path.display()
        )
    })
}

fn parse_key(t: &str) -> Option<[u8; 32]> {
    let bytes = if t.len() == 64 {
        hex::decode(t).ok()?
    } else {
        B64.decode(t).ok()?
    };
    bytes.try_into().ok()
}

fn aad(realm: &str, name: &str, family: SecretFamily) -> Vec<u8> {
    format!(
        "authrelay-credential-v1\0{realm}\0{name}\0{}",
        family.name()
    )
    .into_bytes()
}

impl Keyring {
    /// The keys of `cfg`: `credential_store.encryption_key_file` to seal
    /// with, or with the file backend and no key file, the generated one
    /// (made on first use); PostgreSQL without a key file is refused.
    pub fn from_config(cfg: &Config) -> Result<Keyring, anyhow::Error> {
        let cs = &cfg.credential_store;
        let (current, generated) = match (&cs.encryption_key_file, cs.backend) {
            (Some(p), _) => (
                read_key_file(p)
                    .map_err(|e| anyhow::anyhow!("credential_store.encryption_key_file: {e}"))?,
                false,
            ),
            (None, CredentialBackend::Postgres) => anyhow::bail!("{POSTGRES_NEEDS_KEY}"),
            (None, CredentialBackend::File) => (
                load_or_generate_key(&generated_key_path(cfg)).map_err(|e| {
                    anyhow::anyhow!(
                        "credential_store: the generated encryption key (set \
                         credential_store.encryption_key_file to use your own): {e}"
                    )
                })?,
                true,
            ),
        };
        let current = Key::from_bytes(&current);
        let mut old: Vec<Key> = cs
            .encryption_old_key_files
            .iter()
            .map(|p| {
                read_key_file(p)
                    .map(|k| Key::from_bytes(&k))
                    .map_err(|e| anyhow::anyhow!("credential_store.encryption_old_key_files: {e}"))
            })
            .collect::<Result<_, _>>()?;
        // A key file configured after a store sealed with its generated
        // key: what the generated key sealed stays readable (never sealed
        // with again) until `authrelay user reseal`, instead of locking
        // every user out.
        let made = generated_key_path(cfg);
        if !generated && made.is_file() {
            match read_key_file(&made) {
                Ok(k) => {
                    let k = Key::from_bytes(&k);
                    if k.id != current.id && old.iter().all(|o| o.id != k.id) {
                        tracing::info!(
                            key_file = %made.display(),
                            key_id = %k.id,
                            "the generated key still opens what it sealed, until `authrelay user reseal`"
                        );
                        old.push(k);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "generated key not usable"),
            }
        }
        tracing::info!(key_id = %current.id, generated, "stored secrets are sealed");
        Ok(Keyring {
            current: Some(current),
            old,
            // Records written before sealing was the default stay readable
            // under the generated key: it lives beside the database, so
            // whoever could plant an unsealed record there could read the
            // key too; refusing them would only lock users out.
            allow_unsealed: cs.encryption_allow_unsealed || generated,
            told_unsealed: AtomicBool::new(false),
        })
    }

    /// A keyring sealing with `key` (tests and tools).
    pub fn with_key(key: &[u8; 32], old: &[[u8; 32]]) -> Keyring {
        Keyring {
            current: Some(Key::from_bytes(key)),
            old: old.iter().map(Key::from_bytes).collect(),
            ..Keyring::default()
        }
    }

    /// The id new writes are sealed with; None when encryption is off.
    pub fn current_id(&self) -> Option<&str> {
        self.current.as_ref().map(|k| k.id.as_str())
    }

    /// The bytes to store for `secret` of user (realm, name).
    pub fn seal(
        &self,
        realm: &str,
        name: &str,
        secret: &StoredSecret,
    ) -> Result<Vec<u8>, StoreError> {
        let entry = match &self.current {
            None => Entry::Plain(secret.clone()),
            Some(key) => {
                let plain = serde_json::to_vec(secret)
                    .map_err(|e| StoreError::Backend(format!("encode secret: {e}")))?;
                let mut nonce = [0u8; 12];
                // Random 96-bit nonces: fine far below 2^32 writes per key, and a
                // reseal rotates the key long before that.
                rand::rngs::OsRng.fill_bytes(&mut nonce);
                let ct = key
                    .cipher
                    .encrypt(
                        Nonce::from_slice(&nonce),
                        Payload {
                            msg: &plain,
                            aad: &aad(realm, name, secret.family()),
                        },
                    )
                    .map_err(|_| StoreError::Sealing("cannot seal".into()))?;
                Entry::Sealed {
                    sealed: SealedBox {
                        kid: key.id.clone(),
                        nonce: B64.encode(nonce),
                        ct: B64.encode(ct),
                    },
                }
            }
        };
        serde_json::to_vec(&entry).map_err(|e| StoreError::Backend(format!("encode secret: {e}")))
    }

    /// The secret stored as `bytes` for (realm, name, family). Fails closed:
    /// an unknown key id, a tag that does not verify (wrong key, tampering,
    /// a box moved to another user) or, with encryption on, an unsealed record.
    pub fn open(
        &self,
        realm: &str,
        name: &str,
        family: SecretFamily,
        bytes: &[u8],
    ) -> Result<StoredSecret, StoreError> {
        self.open_inner(realm, name, family, bytes, self.allow_unsealed, true)
    }

    fn open_inner(
        &self,
        realm: &str,
        name: &str,
        family: SecretFamily,
        bytes: &[u8],
        allow_unsealed: bool,
        tell_unsealed: bool,
    ) -> Result<StoredSecret, StoreError> {
        let entry = Entry::decode(bytes)?;
        let secret = match entry {
            Entry::Plain(s) => {
                if self.current.is_some() && !allow_unsealed {
                    return Err(StoreError::Sealing(
                        "record is not sealed but encryption is on (run `authrelay user reseal`, \
                         or set credential_store.encryption_allow_unsealed while migrating)"
                            .into(),
                    ));
                }
                if tell_unsealed
                    && self.current.is_some()
                    && !self.told_unsealed.swap(true, Ordering::Relaxed)
                {
                    tracing::warn!(
                        "secrets stored before sealing was on are still in the clear: run `authrelay user reseal`"
                    );
                }
                s
            }
            Entry::Sealed { sealed } => {
                let key = self
                    .current
                    .iter()
                    .chain(&self.old)
                    .find(|k| k.id == sealed.kid)
                    .ok_or_else(|| {
                        StoreError::Sealing(format!(
                            "record sealed with unknown key id {}",
                            sealed.kid
                        ))
                    })?;
                let nonce = B64
                    .decode(&sealed.nonce)
                    .ok()
                    .filter(|n| n.len() == 12)
                    .ok_or_else(|| StoreError::Sealing("malformed nonce".into()))?;
                let ct = B64
                    .decode(&sealed.ct)
                    .map_err(|_| StoreError::Sealing("malformed box".into()))?;
                let plain = key
                    .cipher
                    .decrypt(
                        Nonce::from_slice(&nonce),
                        Payload {
                            msg: &ct,
                            aad: &aad(realm, name, family),
                        },
                    )
                    .map_err(|_| {
                        StoreError::Sealing(format!(
                            "record does not open with key {} (wrong key or tampered)",
                            key.id
                        ))
                    })?;
                serde_json::from_slice(&plain).map_err(|e| malformed(&e))?
            }
        };
        if secret.family() != family {
            return Err(StoreError::Sealing(format!(
                "record under {family} holds another family"
            )));
        }
        Ok(secret)
    }

    /// For a reseal: the new bytes for a stored entry, or None when it is
    /// already as it should be (sealed with the current key, or plain with
    /// encryption off).
    pub fn reseal(
        &self,
        realm: &str,
        name: &str,
        family: SecretFamily,
        bytes: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let entry = Entry::decode(bytes)?;
        let up_to_date = match (&entry, &self.current) {
            (Entry::Sealed { sealed }, Some(k)) => sealed.kid == k.id,
            (Entry::Plain(_), None) => true,
            _ => false,
        };
        if up_to_date {
            return Ok(None);
        }
        let secret = self.open_inner(realm, name, family, bytes, true, false)?;
        self.seal(realm, name, &secret).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use authrelay_sasl::{SecretParams, derive_secret};

    fn secret() -> StoredSecret {
        derive_secret(
            SecretFamily::ScramSha256,
            "u",
            "r",
            b"pw",
            &SecretParams::default(),
        )
    }

    #[test]
    fn sealed_entry_holds_no_secret_bytes_and_opens_with_its_key() {
        let ring = Keyring::with_key(&[7; 32], &[]);
        let s = secret();
        let bytes = ring.seal("r", "u", &s).unwrap();
        let StoredSecret::ScramSha256 { stored_key, .. } = &s else {
            unreachable!()
        };
        assert!(!bytes.windows(32).any(|w| w == stored_key));
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(!text.contains(&B64.encode(stored_key)), "{text}");
        assert!(!text.contains("ScramSha256"), "{text}");
        assert!(
            ring.open("r", "u", SecretFamily::ScramSha256, &bytes)
                .unwrap()
                == s,
            "round trip"
        );
    }

    #[test]
    fn a_box_moved_to_another_user_or_family_does_not_open() {
        let ring = Keyring::with_key(&[7; 32], &[]);
        let bytes = ring.seal("r", "u", &secret()).unwrap();
        assert!(
            ring.open("r", "v", SecretFamily::ScramSha256, &bytes)
                .is_err()
        );
        assert!(
            ring.open("r2", "u", SecretFamily::ScramSha256, &bytes)
                .is_err()
        );
        assert!(
            ring.open("r", "u", SecretFamily::ScramSha1, &bytes)
                .is_err()
        );
    }

    #[test]
    fn a_malformed_record_is_refused_without_quoting_it() {
        let ring = Keyring::default();
        // A PHC string where a byte array belongs: serde would quote it.
        let bad = br#"{"DigestMd5":{"ha1":"$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA"}}"#;
        let err = ring
            .open("r", "u", SecretFamily::DigestMd5, bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains("malformed record"), "{err}");
        assert!(!err.contains("argon2id"), "{err}");
        let sealed = Keyring::with_key(&[7; 32], &[]);
        let err = sealed
            .open(
                "r",
                "u",
                SecretFamily::DigestMd5,
                br#"{"sealed":{"kid":1}}"#,
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("malformed record"), "{err}");
    }

    #[test]
    fn wrong_key_fails_closed() {
        let bytes = Keyring::with_key(&[7; 32], &[])
            .seal("r", "u", &secret())
            .unwrap();
        let other = Keyring::with_key(&[8; 32], &[]);
        let err = other
            .open("r", "u", SecretFamily::ScramSha256, &bytes)
            .unwrap_err();
        assert!(matches!(err, StoreError::Sealing(_)), "{err}");
        // Same key id forged onto a box made with another key: the tag fails.
        let forged = String::from_utf8(bytes)
            .unwrap()
            .replace(&Key::from_bytes(&[7; 32]).id, &Key::from_bytes(&[8; 32]).id);
        assert!(
            other
                .open("r", "u", SecretFamily::ScramSha256, forged.as_bytes())
                .is_err()
        );
    }

    #[test]
    fn unsealed_records_are_refused_once_encryption_is_on_and_resealed() {
        let plain = Keyring::default().seal("r", "u", &secret()).unwrap();
        let ring = Keyring::with_key(&[7; 32], &[]);
        assert!(
            ring.open("r", "u", SecretFamily::ScramSha256, &plain)
                .is_err()
        );
        let sealed = ring
            .reseal("r", "u", SecretFamily::ScramSha256, &plain)
            .unwrap()
            .unwrap();
        assert!(
            ring.open("r", "u", SecretFamily::ScramSha256, &sealed)
                .is_ok()
        );
        assert!(
            ring.reseal("r", "u", SecretFamily::ScramSha256, &sealed)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn rotation_keeps_old_records_readable_until_resealed() {
        let old = Keyring::with_key(&[1; 32], &[]);
        let bytes = old.seal("r", "u", &secret()).unwrap();
        let rotated = Keyring::with_key(&[2; 32], &[[1; 32]]);
        assert!(
            rotated
                .open("r", "u", SecretFamily::ScramSha256, &bytes)
                .is_ok()
        );
        let new = rotated
            .reseal("r", "u", SecretFamily::ScramSha256, &bytes)
            .unwrap()
            .unwrap();
        let only_new = Keyring::with_key(&[2; 32], &[]);
        assert!(
            only_new
                .open("r", "u", SecretFamily::ScramSha256, &new)
                .is_ok()
        );
        assert!(
            only_new
                .open("r", "u", SecretFamily::ScramSha256, &bytes)
                .is_err()
        );
    }

    fn scratch_config(name: &str) -> Config {
        let dir =
            std::env::temp_dir().join(format!("authrelay-seal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Config {
            data_dir: dir.join("data"),
            ..Config::default()
        }
    }

    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn without_a_key_file_the_file_backend_seals_with_a_key_it_generates_once() {
        let cfg = scratch_config("generated");
        let path = generated_key_path(&cfg);
        assert_eq!(path, cfg.data_dir.join("keys/credential-store.key"));
        // What a first start killed while writing the key left behind.
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let torn = path.with_extension(format!("key.{}.new", std::process::id()));
        std::fs::write(&torn, "6a6a").unwrap();

        let ring = Keyring::from_config(&cfg).unwrap();
        let id = ring.current_id().expect("sealing by default").to_owned();
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert_eq!(mode(&path), 0o600);
        assert!(!torn.exists(), "the torn temporary file is gone");
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.trim().len(), 64, "64 hex digits: {text}");

        // Every later start reads the same key; nothing is rewritten.
        let again = Keyring::from_config(&cfg).unwrap();
        assert_eq!(again.current_id(), Some(id.as_str()));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        let sealed = ring.seal("r", "u", &secret()).unwrap();
        assert!(
            again
                .open("r", "u", SecretFamily::ScramSha256, &sealed)
                .is_ok()
        );
        // Records written before sealing was the default stay readable,
        // and a reseal seals them.
        let plain = Keyring::default().seal("r", "u", &secret()).unwrap();
        assert!(
            again
                .open("r", "u", SecretFamily::ScramSha256, &plain)
                .is_ok()
        );
        assert!(
            again
                .reseal("r", "u", SecretFamily::ScramSha256, &plain)
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn an_open_generated_key_file_is_tightened_and_a_configured_key_still_reads_its_records() {
        let mut cfg = scratch_config("configured-later");
        let generated = Keyring::from_config(&cfg).unwrap();
        let sealed = generated.seal("r", "u", &secret()).unwrap();
        let path = generated_key_path(&cfg);
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        drop(Keyring::from_config(&cfg).unwrap());
        assert_eq!(mode(&path), 0o600);

        // The operator configures a key of their own: it seals from now on,
        // the generated one still opens what it sealed.
        let own = cfg.data_dir.with_file_name("own.key");
        std::fs::write(&own, "5c".repeat(32)).unwrap();
        cfg.credential_store.encryption_key_file = Some(own);
        let ring = Keyring::from_config(&cfg).unwrap();
        assert_ne!(ring.current_id(), generated.current_id());
        assert!(
            ring.open("r", "u", SecretFamily::ScramSha256, &sealed)
                .is_ok()
        );
        let moved = ring
            .reseal("r", "u", SecretFamily::ScramSha256, &sealed)
            .unwrap()
            .expect("moved to the configured key");
        assert!(
            Keyring::with_key(&[0x5c; 32], &[])
                .open("r", "u", SecretFamily::ScramSha256, &moved)
                .is_ok()
        );
        // With a configured key, unsealed records are refused as before.
        let plain = Keyring::default().seal("r", "u", &secret()).unwrap();
        assert!(
            ring.open("r", "u", SecretFamily::ScramSha256, &plain)
                .is_err()
        );
    }

    #[test]
    fn postgres_without_a_key_file_is_refused_naming_the_key_and_generates_nothing() {
        let mut cfg = scratch_config("postgres");
        cfg.credential_store.backend = CredentialBackend::Postgres;
        cfg.credential_store.database_url = "postgres://u@h/db".into();
        let err = Keyring::from_config(&cfg)
            .err()
            .expect("refused")
            .to_string();
        assert!(
            err.contains("credential_store.encryption_key_file"),
            "{err}"
        );
        assert!(!cfg.data_dir.exists(), "no key generated on local disk");
    }

    #[test]
    fn key_files_take_hex_or_base64_of_exactly_32_bytes() {
        assert_eq!(parse_key(&"ab".repeat(32)), Some([0xab; 32]));
        assert_eq!(parse_key(&B64.encode([5u8; 32])), Some([5; 32]));
        assert_eq!(parse_key(&B64.encode([5u8; 16])), None);
        assert_eq!(parse_key("not a key"), None);
    }
}
