//! The secrets of a test deployment: token and key files (0600), and
//! gRPC interceptors that present the tokens as the services and an
//! administrator do.

use std::path::{Path, PathBuf};

/// A fresh key for sealing SASL exchange state (`sasl.exchange_key_file`),
/// shared by every sasl-auth of a test: 64 hex digits from the kernel's
/// random source, in a 0600 file.
pub fn exchange_key(dir: &Path) -> PathBuf {
    token_file(dir, "exchange.key")
}

/// A token file of 64 hex digits under `dir` (made once).
pub fn token_file(dir: &Path, name: &str) -> PathBuf {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    if !path.exists() {
        let mut bytes = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .expect("read /dev/urandom");
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .expect("create token file");
        std::io::Write::write_all(&mut f, hex.as_bytes()).unwrap();
    }
    path
}

/// The credentials every separate service of a test deployment needs:
/// the admin token (admin calls over TCP) and the internal token (the
/// services' calls to each other), as TOML to merge into its config.
pub fn tokens_toml(dir: &Path) -> String {
    format!(
        "[admin]\ntoken_file = \"{}\"\n\n[internal]\ntoken_file = \"{}\"\n",
        token_file(dir, "admin.token").display(),
        token_file(dir, "internal.token").display()
    )
}

/// Presents a test deployment's internal token (`tokens_toml`) on every
/// call of a gRPC client, as the services do to each other.
#[derive(Clone)]
pub struct InternalToken(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for InternalToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut()
            .insert("x-authrelay-internal-token", self.0.clone());
        Ok(req)
    }
}

/// Both of a test deployment's tokens on every call: an administrator's
/// client that also speaks to the internal APIs (GetSecret).
#[derive(Clone)]
pub struct AllTokens {
    admin: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    internal: InternalToken,
}

impl tonic::service::Interceptor for AllTokens {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let mut req = self.internal.call(req)?;
        req.metadata_mut()
            .insert("authorization", self.admin.clone());
        Ok(req)
    }
}

pub fn all_tokens(dir: &Path) -> AllTokens {
    let t = std::fs::read_to_string(token_file(dir, "admin.token")).unwrap();
    AllTokens {
        admin: format!("Bearer {}", t.trim()).parse().unwrap(),
        internal: internal_token(dir),
    }
}

pub fn internal_token(dir: &Path) -> InternalToken {
    let t = std::fs::read_to_string(token_file(dir, "internal.token")).unwrap();
    InternalToken(t.trim().parse().unwrap())
}
