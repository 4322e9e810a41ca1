//! `[credential_store]` and `[relay_queue]`: where secrets are kept and
//! how mail is spooled and delivered.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{TokenSourceConfig, WordList};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceListen {
    pub listen: SocketAddr,
    /// Also listen on this Unix-domain socket (plain HTTP/2, mode 0660),
    /// for co-located clients whose endpoint is `unix:PATH`. Not with
    /// `internal_tls.enabled`, which asks for mutual TLS on every connection.
    pub listen_unix: Option<PathBuf>,
}

impl Default for ServiceListen {
    fn default() -> Self {
        ServiceListen {
            listen: "127.0.0.1:7341".parse().expect("literal"),
            listen_unix: None,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CredentialBackend {
    /// Embedded crash-safe file database (redb) under `data_dir`.
    #[default]
    File,
    /// PostgreSQL at `database_url` (replicas, HA).
    Postgres,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CredentialStoreConfig {
    pub listen: SocketAddr,
    /// Also listen on this Unix-domain socket (plain HTTP/2, mode 0660),
    /// for co-located clients whose endpoint is `unix:PATH`. Not with
    /// `internal_tls.enabled`, which asks for mutual TLS on every connection.
    pub listen_unix: Option<PathBuf>,
    pub backend: CredentialBackend,
    /// File backend: the database file; default `data_dir/credentials.redb`.
    pub path: Option<PathBuf>,
    /// Postgres backend: `postgres://user@host/db`.
    pub database_url: String,
    /// Mechanisms a new user gets when `--mech` is not given.
    pub default_mechanisms: WordList,
    pub scram_iterations: u32,
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    /// Realms users may be created in; empty = any realm.
    pub realms: WordList,
    /// Encryption at rest: a file holding 32 random bytes (hex or base64).
    /// Set, every secret written is sealed (ChaCha20-Poly1305) with it.
    pub encryption_key_file: Option<PathBuf>,
    /// Older keys, only read: records sealed with them stay readable until
    /// `authrelay user reseal` has re-sealed everything under the current key.
    pub encryption_old_key_files: Vec<PathBuf>,
    /// With a key set, still accept records stored unsealed (the window
    /// between turning encryption on and the first reseal). Default: refuse.
    pub encryption_allow_unsealed: bool,
}

impl Default for CredentialStoreConfig {
    fn default() -> Self {
        CredentialStoreConfig {
            listen: "127.0.0.1:7342".parse().expect("literal"),
            listen_unix: None,
            backend: CredentialBackend::File,
            path: None,
            database_url: String::new(),
            default_mechanisms: WordList::from([
                "SCRAM-SHA-256",
                "SCRAM-SHA-1",
                "DIGEST-MD5",
                "CRAM-MD5",
                "PLAIN",
                "LOGIN",
            ]),
            scram_iterations: 4096,
            argon2_memory_kib: 19456,
            argon2_iterations: 2,
            realms: WordList::default(),
            encryption_key_file: None,
            encryption_old_key_files: Vec::new(),
            encryption_allow_unsealed: false,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayQueueConfig {
    pub listen: SocketAddr,
    /// Also listen on this Unix-domain socket (plain HTTP/2, mode 0660),
    /// for co-located clients whose endpoint is `unix:PATH`. Not with
    /// `internal_tls.enabled`, which asks for mutual TLS on every connection.
    pub listen_unix: Option<PathBuf>,
    /// Spool directory; default `data_dir/spool`.
    pub spool_dir: Option<PathBuf>,
    /// Default next hop `host:port` for every domain without a route.
    pub smarthost: String,
    /// Per-domain next hops, like sendmail's mailertable: domain → `host:port`.
    pub routes: BTreeMap<String, String>,
    /// First retry delay; doubles per attempt up to `retry_max`, with jitter.
    #[serde(with = "humantime_serde")]
    pub retry_initial: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// Give up and bounce after this long (`confTO_QUEUERETURN`).
    #[serde(with = "humantime_serde")]
    pub max_queue_lifetime: Duration,
    /// Outbound connect + command deadline.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Concurrent deliveries.
    pub max_deliveries: usize,
    /// Name we announce in EHLO to the next hop; default `hostname`.
    pub helo_name: String,
    /// Sendmail-style AuthInfo map file (`AuthInfo:host "U:…" "P:…" …` lines).
    pub authinfo_file: Option<PathBuf>,
    /// AuthInfo entries in TOML (`[[relay_queue.authinfo]]`), beside the file's.
    pub authinfo: Vec<AuthInfoEntry>,
    /// Outbound TLS towards next hops without an entry in `tls_hosts`.
    pub tls: OutboundTls,
    /// Outbound TLS per next-hop host (as in a route or the smarthost).
    pub tls_hosts: BTreeMap<String, OutboundTls>,
    /// PEM CA bundle for `required-verify`; unset = the Mozilla roots (webpki-roots).
    pub tls_ca_file: Option<PathBuf>,
    /// After a host fails to answer, skip it for this long (`confTO_HOSTSTATUS`); 0 = off.
    #[serde(with = "humantime_serde")]
    pub host_status_ttl: Duration,
    /// DNS servers (`ip:port`) for MX routing of domains without a route or
    /// smarthost; empty = the system's resolv.conf.
    pub dns_servers: WordList,
    /// Port of MX hosts and A/AAAA-fallback hosts (RFC 5321 §5.1: 25).
    pub mx_port: u16,
    /// `background` delivers as soon as a message is queued; `queue-only`
    /// (sendmail's DeliveryMode=q) only spools until `queue flush` or ETRN.
    pub delivery_mode: DeliveryMode,
    /// OAuth2 token sources AuthInfo entries name (`O:NAME`) for XOAUTH2 and
    /// OAUTHBEARER to the next hop.
    pub token_sources: BTreeMap<String, TokenSourceConfig>,
    /// Where refresh tokens are kept, sealed; default `data_dir/oauth`.
    pub token_store_dir: Option<PathBuf>,
    /// Key (64 hex digits) sealing the stored refresh tokens; unset = one
    /// generated on first use into `data_dir/keys/relay-queue-oauth.key`.
    pub token_key_file: Option<PathBuf>,
}

/// When queued messages are delivered (sendmail's `DeliveryMode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryMode {
    /// Deliver right after the message is on disk, retry on schedule.
    #[default]
    Background,
    /// Spool only; deliver what an operator flushes (`queue flush`, ETRN).
    QueueOnly,
}

/// One AuthInfo entry in TOML; the password comes from a file (a mounted Secret).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthInfoEntry {
    /// Next-hop host name or address; empty = every host without its own entry.
    pub host: String,
    /// Authorization id (`U`).
    #[serde(default)]
    pub user: String,
    /// Authentication id (`I`); defaults to `user`.
    #[serde(default)]
    pub authid: String,
    /// `P`, from a file. This or `token_source`.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// `O`: a `[relay_queue.token_sources.NAME]`, for XOAUTH2/OAUTHBEARER.
    #[serde(default)]
    pub token_source: String,
    /// `R`: DIGEST-MD5 realm, and the `@REALM` of the login for the other mechanisms.
    #[serde(default)]
    pub realm: String,
    /// `M`: mechanisms allowed with this hop; empty = any.
    #[serde(default)]
    pub mechanisms: WordList,
}

/// Outbound TLS policy for a next hop.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutboundTls {
    /// STARTTLS when offered, without verifying the certificate (RFC 7435).
    #[default]
    Opportunistic,
    /// STARTTLS or no delivery; the certificate is not verified.
    Required,
    /// STARTTLS with a certificate valid for the host, or no delivery.
    RequiredVerify,
    /// Never STARTTLS.
    None,
}

impl Default for RelayQueueConfig {
    fn default() -> Self {
        RelayQueueConfig {
            listen: "127.0.0.1:7343".parse().expect("literal"),
            listen_unix: None,
            spool_dir: None,
            smarthost: String::new(),
            routes: BTreeMap::new(),
            retry_initial: Duration::from_secs(60),
            retry_max: Duration::from_secs(3600),
            max_queue_lifetime: Duration::from_secs(5 * 86400),
            connect_timeout: Duration::from_secs(30),
            max_deliveries: 16,
            helo_name: String::new(),
            authinfo_file: None,
            authinfo: Vec::new(),
            tls: OutboundTls::Opportunistic,
            tls_hosts: BTreeMap::new(),
            tls_ca_file: None,
            host_status_ttl: Duration::from_secs(300),
            dns_servers: WordList::default(),
            mx_port: 25,
            delivery_mode: DeliveryMode::Background,
            token_sources: BTreeMap::new(),
            token_store_dir: None,
            token_key_file: None,
        }
    }
}
