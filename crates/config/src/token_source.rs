//! OAuth2 token sources: where relay-queue gets the access token it sends
//! with XOAUTH2 or OAUTHBEARER to a next hop whose AuthInfo entry names the
//! source (`"O:NAME"` in the map file, `token_source = "NAME"` in TOML)
//! instead of a password.
//!
//! ```toml
//! [relay_queue.token_sources.m365]
//! grant = "client-credentials"
//! token_url = "https://login.microsoftonline.com/TENANT/oauth2/v2.0/token"
//! client_id = "00000000-0000-0000-0000-000000000000"
//! client_secret_file = "/etc/authrelay/m365-client-secret"
//! scope = "https://outlook.office365.com/.default"
//! ```
//!
//! A `refresh-token` source keeps its refresh token sealed at rest under
//! `relay_queue.token_store_dir`, put there by `authrelay authinfo token set`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// The OAuth2 grant a token source uses (RFC 6749 §4.4 and §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OAuthGrant {
    /// The relay is a confidential client acting for itself (Microsoft 365
    /// application permissions, an internal issuer).
    ClientCredentials,
    /// A user (or service account) consented once; the refresh token given
    /// then buys access tokens (Google Workspace, delegated Microsoft 365).
    RefreshToken,
}

/// How the client authenticates to the token endpoint (RFC 6749 §2.3.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientAuthMethod {
    /// HTTP Basic with the client id and secret (`client_secret_basic`), which
    /// every token endpoint must accept.
    #[default]
    Basic,
    /// `client_id` and `client_secret` in the form body (`client_secret_post`).
    Post,
}

/// One `[relay_queue.token_sources.NAME]` section.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSourceConfig {
    pub grant: OAuthGrant,
    /// The token endpoint; `https://` only (the client secret and the
    /// tokens cross it).
    pub token_url: String,
    pub client_id: String,
    /// File holding the client secret (a mounted Secret); read at each
    /// fetch, so a rotated secret needs no restart. Required for
    /// `client-credentials`, optional for `refresh-token` (public clients).
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// `scope` asked for; empty = none sent.
    #[serde(default)]
    pub scope: String,
    #[serde(default)]
    pub client_auth: ClientAuthMethod,
    /// PEM CA bundle the endpoint's certificate must chain to; unset = the
    /// Mozilla roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// Checks every token source: names, URL, files, grant-specific keys.
pub(crate) fn validate(
    sources: &std::collections::BTreeMap<String, TokenSourceConfig>,
) -> Result<(), ConfigError> {
    for (name, s) in sources {
        let key = |k: &str| format!("relay_queue.token_sources.{name}.{k}");
        if !valid_name(name) {
            return Err(ConfigError::new(
                format!("relay_queue.token_sources.{name}"),
                name,
                "a token source name is letters, digits, '-' and '_' (it names a file)",
            ));
        }
        let url = s.token_url.trim();
        if !url.starts_with("https://") || url.len() <= "https://".len() {
            return Err(ConfigError::new(
                key("token_url"),
                &s.token_url,
                "must be an https:// URL: the client secret and tokens cross it",
            ));
        }
        if s.client_id.trim().is_empty() {
            return Err(ConfigError::new(key("client_id"), "", "is required"));
        }
        match (&s.client_secret_file, s.grant) {
            (None, OAuthGrant::ClientCredentials) => {
                return Err(ConfigError::new(
                    key("client_secret_file"),
                    "",
                    "is required for grant = \"client-credentials\"",
                ));
            }
            (Some(f), _) if !f.is_file() => {
                return Err(ConfigError::new(
                    key("client_secret_file"),
                    f.display().to_string(),
                    "no such file",
                ));
            }
            _ => {}
        }
        if let Some(f) = &s.ca_file
            && !f.is_file()
        {
            return Err(ConfigError::new(
                key("ca_file"),
                f.display().to_string(),
                "no such file",
            ));
        }
    }
    Ok(())
}

/// A token source's name is also its refresh-token file's name.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use crate::Config;

    /// Loads `toml` (with `SECRET` replaced by a real secret file's path).
    fn load(name: &str, toml: &str) -> Result<Config, crate::ConfigError> {
        let dir = std::env::temp_dir().join(format!(
            "authrelay-token-source-{name}-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("secret");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, toml.replace("SECRET", &secret.display().to_string())).unwrap();
        Config::load_with_env(Some(&path), std::iter::empty())
    }

    const SOURCE: &str = r#"
[relay_queue.token_sources.m365]
grant = "client-credentials"
token_url = "https://login.example/token"
client_id = "app"
client_secret_file = "SECRET"
"#;

    #[test]
    fn a_token_source_and_the_entry_naming_it_are_accepted() {
        let cfg = load(
            "ok",
            &format!(
                "{SOURCE}\n[[relay_queue.authinfo]]\nhost = \"smtp.office365.com\"\nuser = \"relay@contoso.com\"\ntoken_source = \"m365\"\nmechanisms = \"XOAUTH2\"\n"
            ),
        )
        .unwrap();
        let map = cfg.authinfo().unwrap();
        assert_eq!(
            map.lookup("smtp.office365.com").unwrap().token_source(),
            Some("m365")
        );
    }

    #[test]
    fn a_plain_http_token_url_is_refused_naming_the_key() {
        let err = load("http", &SOURCE.replace("https://", "http://")).unwrap_err();
        assert_eq!(err.key, "relay_queue.token_sources.m365.token_url");
        assert!(err.reason.contains("https://"), "{err}");
    }

    #[test]
    fn client_credentials_without_a_secret_file_is_refused() {
        let err = load(
            "nosecret",
            &SOURCE.replace("client_secret_file = \"SECRET\"\n", ""),
        )
        .unwrap_err();
        assert_eq!(err.key, "relay_queue.token_sources.m365.client_secret_file");
        let err = load("missing", &SOURCE.replace("SECRET", "/nonexistent/secret")).unwrap_err();
        assert_eq!(err.reason, "no such file");
    }

    #[test]
    fn an_entry_with_both_password_and_token_source_or_an_unknown_source_is_refused() {
        let err = load(
            "unknown",
            "[[relay_queue.authinfo]]\nhost = \"h\"\nuser = \"u\"\ntoken_source = \"nope\"\n",
        )
        .unwrap_err();
        assert_eq!(err.key, "relay_queue.token_sources");
        assert!(
            err.reason.contains("[relay_queue.token_sources.nope]"),
            "{err}"
        );
        let err = load(
            "both",
            &format!(
                "{SOURCE}\n[[relay_queue.authinfo]]\nhost = \"h\"\nuser = \"u\"\ntoken_source = \"m365\"\npassword_file = \"SECRET\"\n"
            ),
        )
        .unwrap_err();
        assert_eq!(err.key, "relay_queue.authinfo[0].token_source");
    }
}
