//! Refresh tokens at rest. A refresh token is a password: whoever holds it
//! gets access tokens until it is revoked. Each lives in its own file,
//! `TOKEN_STORE_DIR/NAME.token` (0600 in a 0700 directory), sealed with
//! ChaCha20-Poly1305 under `relay_queue.token_key_file` or a key generated
//! on first use into `DATA_DIR/keys/relay-queue-oauth.key` — the same
//! scheme credential-store uses for its secrets. The associated data binds
//! a sealed token to its source's name, so a file copied onto another
//! source's name does not open. Writes go to a temporary file, are synced
//! and renamed into place: a crash leaves the old token or the new one,
//! never half of one.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use authrelay_config::Config;
use authrelay_telemetry::private_fs;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use rand::RngCore as _;
use sha2::{Digest, Sha256};

use super::Secret;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Io(String),
    #[error("{} does not open with the token key (another key, or altered)", .0.display())]
    Unseal(PathBuf),
}

/// Where refresh tokens are kept, and the key that seals them.
pub struct RefreshTokenStore {
    dir: PathBuf,
    key_file: PathBuf,
    generate_key: bool,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SealedFile {
    /// Key id: the first 8 bytes of SHA-256 over a label and the key.
    kid: String,
    nonce: String,
    ct: String,
}

const AAD_LABEL: &[u8] = b"authrelay oauth refresh token v1\0";

impl RefreshTokenStore {
    pub fn new(cfg: &Config) -> Self {
        let (key_file, generate_key) = match &cfg.relay_queue.token_key_file {
            Some(f) => (f.clone(), false),
            None => (
                cfg.data_dir.join("keys").join("relay-queue-oauth.key"),
                true,
            ),
        };
        RefreshTokenStore {
            dir: cfg.token_store_dir(),
            key_file,
            generate_key,
        }
    }

    pub fn path(&self, source: &str) -> PathBuf {
        self.dir.join(format!("{source}.token"))
    }

    pub fn exists(&self, source: &str) -> bool {
        self.path(source).is_file()
    }

    /// The stored refresh token of `source`, `None` when none was set.
    pub fn load(&self, source: &str) -> Result<Option<Secret>, StoreError> {
        let path = self.path(source);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::Io(format!("{}: {e}", path.display()))),
        };
        let sealed: SealedFile =
            serde_json::from_slice(&bytes).map_err(|_| StoreError::Unseal(path.clone()))?;
        let key = self.key()?;
        let (cipher, kid) = cipher(&key);
        if sealed.kid != kid {
            return Err(StoreError::Unseal(path));
        }
        let nonce = B64
            .decode(&sealed.nonce)
            .ok()
            .filter(|n| n.len() == 12)
            .ok_or_else(|| StoreError::Unseal(path.clone()))?;
        let ct = B64
            .decode(&sealed.ct)
            .map_err(|_| StoreError::Unseal(path.clone()))?;
        let plain = cipher
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &ct,
                    aad: &aad(source),
                },
            )
            .map_err(|_| StoreError::Unseal(path.clone()))?;
        let text = String::from_utf8(plain).map_err(|_| StoreError::Unseal(path))?;
        Ok(Some(Secret::new(text)))
    }

    /// Seals `token` as `source`'s refresh token, replacing any before it
    /// atomically.
    pub fn save(&self, source: &str, token: &Secret) -> Result<(), StoreError> {
        let io = |what: &str, p: &Path, e: std::io::Error| {
            StoreError::Io(format!("{what} {}: {e}", p.display()))
        };
        private_fs::private_dir(&self.dir).map_err(|e| io("create", &self.dir, e))?;
        let key = self.key()?;
        let (cipher, kid) = cipher(&key);
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ct = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: token.expose().as_bytes(),
                    aad: &aad(source),
                },
            )
            .map_err(|_| StoreError::Io("sealing failed".into()))?;
        let body = serde_json::to_vec(&SealedFile {
            kid,
            nonce: B64.encode(nonce),
            ct: B64.encode(ct),
        })
        .map_err(|e| StoreError::Io(e.to_string()))?;
        let path = self.path(source);
        let tmp = self
            .dir
            .join(format!(".{source}.token.{}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        {
            let mut f = private_fs::create_private_file(&tmp).map_err(|e| io("create", &tmp, e))?;
            f.write_all(&body)
                .and_then(|()| f.sync_all())
                .map_err(|e| io("write", &tmp, e))?;
        }
        std::fs::rename(&tmp, &path).map_err(|e| io("rename into", &path, e))?;
        // The rename itself is durable only once the directory is synced.
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    fn key(&self) -> Result<[u8; 32], StoreError> {
        let io = |e: std::io::Error| StoreError::Io(format!("{}: {e}", self.key_file.display()));
        if self.generate_key && !self.key_file.exists() {
            generate_key(&self.key_file).map_err(io)?;
        }
        let text = std::fs::read_to_string(&self.key_file).map_err(io)?;
        let text = text.trim();
        let bytes = hex::decode(text)
            .ok()
            .or_else(|| B64.decode(text).ok())
            .filter(|b| b.len() == 32)
            .ok_or_else(|| {
                StoreError::Io(format!(
                    "{}: expected 32 bytes as 64 hex digits or base64",
                    self.key_file.display()
                ))
            })?;
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes);
        Ok(key)
    }
}

fn aad(source: &str) -> Vec<u8> {
    let mut a = AAD_LABEL.to_vec();
    a.extend_from_slice(source.as_bytes());
    a
}

fn cipher(key: &[u8; 32]) -> (ChaCha20Poly1305, String) {
    let mut h = Sha256::new();
    h.update(b"authrelay oauth token key id v1\0");
    h.update(key);
    (
        ChaCha20Poly1305::new(key.into()),
        hex::encode(&h.finalize()[..8]),
    )
}

/// 32 random bytes as hex in a new 0600 file in a 0700 directory, linked
/// into place so two processes starting at once end up with one key.
fn generate_key(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        private_fs::private_dir(dir)?;
    }
    let mut key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.new", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    {
        let mut f = private_fs::create_private_file(&tmp)?;
        f.write_all(format!("{}\n", hex::encode(key)).as_bytes())?;
        f.sync_all()?;
    }
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(()),
        // Someone else made it first: theirs stands.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn store(name: &str) -> (RefreshTokenStore, PathBuf) {
        let dir = std::env::temp_dir().join(format!("authrelay-rts-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = Config {
            data_dir: dir.clone(),
            ..Config::default()
        };
        (RefreshTokenStore::new(&cfg), dir)
    }

    #[test]
    fn a_saved_token_is_sealed_private_and_opens_again() {
        let (s, dir) = store("roundtrip");
        assert!(s.load("hub").unwrap().is_none());
        s.save("hub", &Secret::new("rt-PLAIN-1234567890".into()))
            .unwrap();
        let path = s.path("hub");
        let raw = std::fs::read(&path).unwrap();
        assert!(!String::from_utf8_lossy(&raw).contains("rt-PLAIN"));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert_eq!(mode(&dir.join("keys/relay-queue-oauth.key")), 0o600);
        assert_eq!(
            s.load("hub").unwrap().unwrap().expose(),
            "rt-PLAIN-1234567890"
        );
        s.save("hub", &Secret::new("rt-rotated".into())).unwrap();
        assert_eq!(s.load("hub").unwrap().unwrap().expose(), "rt-rotated");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_token_file_moved_to_another_source_does_not_open() {
        let (s, dir) = store("moved");
        s.save("a", &Secret::new("rt-a".into())).unwrap();
        std::fs::copy(s.path("a"), s.path("b")).unwrap();
        assert!(matches!(s.load("b"), Err(StoreError::Unseal(_))));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
