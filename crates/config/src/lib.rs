//! authrelay's configuration.
//!
//! One TOML file plus environment overrides (`AUTHRELAY__SECTION__KEY`), the
//! same keys for every service. The seed's sendmail knobs map onto it:
//! `confAUTH_MECHANISMS` → `sasl.mechanisms`, `TRUST_AUTH_MECH` →
//! `sasl.trusted`, `confCW_FILE` → `frontend.local_domains`,
//! `relay_entire_domain`/access map → `frontend.relay_domains`,
//! `frontend.trusted_networks`, `frontend.access`, `confMAX_MESSAGE_SIZE` →
//! `frontend.max_message_size`, `confMAX_DAEMON_CHILDREN` →
//! `frontend.max_connections`, `confCONNECTION_RATE_THROTTLE` →
//! `frontend.connection_rate`, `confTO_*` → `frontend.timeouts`,
//! `confPRIVACY_FLAGS` → `frontend.privacy`, the AuthInfo map →
//! `relay_queue.authinfo`.
//!
//! A configuration is validated whole before anything starts: a bad one is
//! refused naming the key, the value and why — never half-applied.

pub mod authinfo;
mod lists;
pub mod oauth;
mod validate;

pub mod token_source;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use authinfo::{AuthInfo, AuthInfoError, AuthInfoMap, Password};
pub use lists::WordList;
pub use oauth::{Issuer, OAuthConfig};
pub use validate::{ConfigError, parse_host_port, parse_network};

pub use authinfo::AuthSecret;
pub use token_source::{ClientAuthMethod, OAuthGrant, TokenSourceConfig};

/// Environment variables with this prefix override file keys; `__` separates
/// levels: `AUTHRELAY__REDIS__URL=redis://…` sets `redis.url`.
pub const ENV_PREFIX: &str = "AUTHRELAY";

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This host's name in the greeting, EHLO reply and `Received:` (sendmail's `$j`).
    pub hostname: String,
    /// Realm for a login name without `@REALM`.
    pub default_realm: String,
    /// Where the embedded credential database, the spool and generated
    /// certificates live unless their own keys say otherwise.
    pub data_dir: PathBuf,
    pub redis: RedisConfig,
    pub endpoints: Endpoints,
    pub admin: AdminConfig,
    /// How the services prove themselves to each other without mutual TLS.
    pub internal: InternalConfig,
    pub log: LogConfig,
    pub sasl: SaslConfig,
    pub frontend: FrontendConfig,
    pub sasl_auth: ServiceListen,
    pub credential_store: CredentialStoreConfig,
    pub relay_queue: RelayQueueConfig,
    pub telemetry: TelemetryConfig,
    pub internal_tls: InternalTlsConfig,
    /// Stolen-account limits (`[limits.per_user]`).
    pub limits: LimitsConfig,
}

/// Service-to-service mutual TLS for the gRPC between the services.
/// Files in the layout cert-manager writes (`tls.crt`, `tls.key`, `ca.crt`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InternalTlsConfig {
    /// On: every gRPC server requires a client certificate signed by `ca`,
    /// and every client presents `cert` and checks the server against `ca`
    /// and the host name of its `https://` endpoint.
    pub enabled: bool,
    /// PEM certificate chain this service presents, as server and as client.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
    /// PEM CA bundle that signs every peer.
    pub ca: Option<PathBuf>,
    /// A plain-text `grpc.health.v1` server with the same statuses, for
    /// probes that cannot present a client certificate (the kubelet's).
    pub health_listen: Option<SocketAddr>,
    /// How often the three files are read again when in use: renewed
    /// certificates (cert-manager rewrites the Secret's files in place) are
    /// taken for new connections with no restart.
    #[serde(with = "humantime_serde")]
    pub reload_every: Duration,
}

impl Default for InternalTlsConfig {
    fn default() -> Self {
        InternalTlsConfig {
            enabled: false,
            cert: None,
            key: None,
            ca: None,
            health_listen: None,
            reload_every: Duration::from_secs(30),
        }
    }
}

/// Traces, metrics and what they may show.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// OTLP/gRPC collector, e.g. `http://otel-collector:4317`. Empty: the
    /// standard `OTEL_EXPORTER_OTLP_ENDPOINT` variable, and with neither,
    /// no export at all.
    pub otlp_endpoint: String,
    /// Serve Prometheus text metrics at `http://ADDR/metrics`; unset = off.
    pub metrics_listen: Option<SocketAddr>,
    /// Put the login name on AUTH spans (`enduser.id`) and let log events
    /// that name a user become span events. Off by default: user names are
    /// personal data in many jurisdictions. Off, no span or span event
    /// names a user; the log lines still do (they carry the trace id).
    pub span_user_names: bool,
    /// `tracing` directives for the spans exported, apart from `log.level`
    /// (a quiet log keeps full traces). Empty: `info`, every span of the
    /// auth and mail path.
    pub trace_filter: String,
    /// Share of background work (Redis pings, storage reads, calls no
    /// request started) that starts a trace of its own; 0 by default,
    /// 1 to see it all.
    pub background_sample_ratio: f64,
}

impl Default for Config {
    fn default() -> Self {
        let hostname = system_hostname();
        Config {
            default_realm: hostname.clone(),
            hostname,
            data_dir: default_data_dir(),
            redis: RedisConfig::default(),
            endpoints: Endpoints::default(),
            admin: AdminConfig::default(),
            internal: InternalConfig::default(),
            log: LogConfig::default(),
            sasl: SaslConfig::default(),
            frontend: FrontendConfig::default(),
            sasl_auth: ServiceListen::default(),
            credential_store: CredentialStoreConfig::default(),
            relay_queue: RelayQueueConfig::default(),
            telemetry: TelemetryConfig::default(),
            internal_tls: InternalTlsConfig::default(),
            limits: LimitsConfig::default(),
        }
    }
}

/// `[limits]`: what an authenticated account may send, summed over every
/// frontend in the shared store.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub per_user: PerUserLimits,
}

/// `[limits.per_user]`: messages and recipients per hour and per day for
/// each authenticated account (a stolen password's damage is bounded by
/// them), with per-account overrides set by `authrelay user limit`.
/// 0 = no limit for that window.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PerUserLimits {
    pub enabled: bool,
    /// MAIL FROM commands per hour (sliding); past it MAIL gets `450 4.7.1`.
    pub messages_per_hour: u64,
    pub messages_per_day: u64,
    /// Accepted RCPT TO per hour (sliding); past it RCPT gets `452 4.7.1`.
    pub recipients_per_hour: u64,
    pub recipients_per_day: u64,
    /// The hard threshold: when the attempts in a window (refused ones
    /// included) reach `suspend_factor` × that window's limit, the account
    /// is suspended cluster-wide until `authrelay user unlock`. 0 = never.
    pub suspend_factor: u64,
}

impl Default for PerUserLimits {
    fn default() -> Self {
        // Generous for a person or a small office's scanner, far below what
        // a spammer with a stolen password sends in an hour.
        PerUserLimits {
            enabled: true,
            messages_per_hour: 200,
            messages_per_day: 1000,
            recipients_per_hour: 500,
            recipients_per_day: 2000,
            suspend_factor: 3,
        }
    }
}

impl PerUserLimits {
    /// Names of the limits, as in the config, the overrides and the logs.
    pub const NAMES: [&'static str; 4] = [
        "messages_per_hour",
        "messages_per_day",
        "recipients_per_hour",
        "recipients_per_day",
    ];

    pub fn get(&self, name: &str) -> Option<u64> {
        Some(match name {
            "messages_per_hour" => self.messages_per_hour,
            "messages_per_day" => self.messages_per_day,
            "recipients_per_hour" => self.recipients_per_hour,
            "recipients_per_day" => self.recipients_per_day,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port/db`. Empty: an in-process store, which only the
    /// all-in-one `authrelay serve` may use (separate services must share Redis).
    pub url: String,
    /// Per-command deadline; past it the operation fails closed (AUTH → 454).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Prefix for every key, so several deployments can share one Redis.
    pub key_prefix: String,
    /// Redis ACL user to log in as. Empty: the `default` user (plain
    /// `AUTH password`, as with `requirepass`).
    pub username: String,
    /// A file holding the Redis password (one line). Never the password
    /// itself in the config, the environment or a URL: those end up in
    /// ConfigMaps, process listings and logs; a file is a mounted Secret.
    pub password_file: Option<PathBuf>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: String::new(),
            timeout: Duration::from_millis(500),
            key_prefix: "authrelay:".into(),
            username: String::new(),
            password_file: None,
        }
    }
}

impl RedisConfig {
    /// The password from `password_file` (trailing line break removed);
    /// `None` without one. Errors name the file, never its content.
    pub fn read_password(&self) -> Result<Option<String>, String> {
        let Some(path) = &self.password_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("redis.password_file {}: {e}", path.display()))?;
        let password = text.trim_end_matches(['\n', '\r']);
        if password.is_empty() {
            return Err(format!("redis.password_file {}: empty", path.display()));
        }
        Ok(Some(password.to_owned()))
    }

    /// Credentials go in `username` and `password_file` only. A password
    /// in the URL is refused, not just warned about: the URL is a plain
    /// config value (TOML, `AUTHRELAY__REDIS__URL`, a ConfigMap) that
    /// start-up errors and `config check` print. The error never repeats
    /// the URL, so the refused password does not land in a log either.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let authority = self.url.split_once("://").map_or("", |(_, rest)| {
            rest.split(['/', '?']).next().unwrap_or_default()
        });
        let query = self.url.split_once('?').map_or("", |(_, q)| q);
        let in_query = |name: &str| {
            query
                .split('&')
                .any(|kv| kv.split('=').next() == Some(name))
        };
        if authority.contains('@') || in_query("pass") || in_query("user") {
            return Err(ConfigError::new(
                "redis.url",
                "",
                "must not carry credentials (user:password@ or ?user=/&pass=): \
                 set redis.username and put the password in the file named by \
                 redis.password_file",
            ));
        }
        if let Some(path) = &self.password_file {
            if self.url.is_empty() {
                return Err(ConfigError::new(
                    "redis.password_file",
                    path.display().to_string(),
                    "is set but redis.url is empty (the in-process store needs no password)",
                ));
            }
            if !path.is_file() {
                return Err(ConfigError::new(
                    "redis.password_file",
                    path.display().to_string(),
                    "no such file",
                ));
            }
        } else if !self.username.is_empty() {
            return Err(ConfigError::new(
                "redis.username",
                &self.username,
                "needs redis.password_file (a Redis user without a password is not supported)",
            ));
        }
        Ok(())
    }
}

/// Where each service is reached. A comma-separated list (or TOML array)
/// balances requests over several replicas.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Endpoints {
    pub sasl_auth: WordList,
    pub credential_store: WordList,
    pub relay_queue: WordList,
    /// The frontends' admin gRPC (sessions); used by `authrelay sessions`.
    pub frontend: WordList,
    /// Deadline for one gRPC call between services.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for Endpoints {
    fn default() -> Self {
        Endpoints {
            sasl_auth: WordList::from(["http://127.0.0.1:7341"]),
            credential_store: WordList::from(["http://127.0.0.1:7342"]),
            relay_queue: WordList::from(["http://127.0.0.1:7343"]),
            frontend: WordList::from(["http://127.0.0.1:7340"]),
            timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// File holding the admin token every admin call (users, queue,
    /// sessions) must present. Unset: admin calls are taken only on Unix
    /// sockets, whose file mode is the access control (`authrelay serve`).
    pub token_file: Option<PathBuf>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InternalConfig {
    /// File holding the per-deployment token every service presents to the
    /// others (and requires of them) on the internal APIs when
    /// `internal_tls` is off. A separate service refuses to start with
    /// neither: nothing internal listens unauthenticated.
    pub token_file: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// `tracing` filter directives, e.g. `info` or `info,sasl_auth=debug`.
    /// `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SaslConfig {
    /// Offered mechanisms, in EHLO order (`confAUTH_MECHANISMS`).
    pub mechanisms: WordList,
    /// Mechanisms whose sessions may relay (`TRUST_AUTH_MECH`).
    pub trusted: WordList,
    /// Offer PLAIN and LOGIN on a connection without TLS. Off: they appear
    /// only after STARTTLS, and using them before is `538 5.7.11`.
    pub allow_plaintext_without_tls: bool,
    /// DIGEST-MD5 realms offered; empty = `[default_realm]`.
    pub realms: WordList,
    /// Lifetime of an unfinished exchange: the sealed state a challenge
    /// carries is refused after this long.
    #[serde(with = "humantime_serde")]
    pub exchange_ttl: Duration,
    /// File with the key (64 hex digits) that seals exchange state between
    /// SASL steps; every sasl-auth replica needs the same one. Unset in
    /// `authrelay serve`: a random key per process. A separate sasl-auth
    /// refuses to start without it.
    pub exchange_key_file: Option<PathBuf>,
    /// The key before the current one, still accepted (never used to seal)
    /// so keys rotate without failing exchanges in flight.
    pub exchange_previous_key_file: Option<PathBuf>,
    /// Stored secrets cached in sasl-auth (Dovecot's `auth_cache_size`, in
    /// entries); 0 = no cache.
    pub secret_cache_size: usize,
    /// How long a cached secret is used (`auth_cache_ttl`). A change through
    /// credential-store invalidates it at once on every replica.
    #[serde(with = "humantime_serde")]
    pub secret_cache_ttl: Duration,
    /// How long "no such user" is cached (`auth_cache_negative_ttl`).
    #[serde(with = "humantime_serde")]
    pub secret_cache_negative_ttl: Duration,
    /// Proxy rights: authentication id (NAME@REALM) → authorization ids it
    /// may act as (`*` = any). Without an entry an authzid different from the
    /// authcid is refused.
    pub proxy: BTreeMap<String, WordList>,
    pub limits: BruteForceLimits,
    /// EXTERNAL: how a verified client-certificate identity maps to a user.
    pub external: ExternalConfig,
    /// How long a successful PLAIN/LOGIN verification is remembered (as a
    /// keyed fingerprint in sasl-auth's memory) so a client that reconnects
    /// does not pay Argon2id each time; 0 = off.
    #[serde(with = "humantime_serde")]
    pub verified_cache_ttl: Duration,
    /// OAUTHBEARER / XOAUTH2: the token issuers trusted.
    pub oauth: OAuthConfig,
}

impl Default for SaslConfig {
    fn default() -> Self {
        let all = WordList::from([
            "SCRAM-SHA-256-PLUS",
            "SCRAM-SHA-256",
            "SCRAM-SHA-1-PLUS",
            "SCRAM-SHA-1",
            "DIGEST-MD5",
            "CRAM-MD5",
            "PLAIN",
            "LOGIN",
        ]);
        SaslConfig {
            trusted: all.clone(),
            mechanisms: all,
            allow_plaintext_without_tls: false,
            realms: WordList::default(),
            exchange_ttl: Duration::from_secs(60),
            exchange_key_file: None,
            exchange_previous_key_file: None,
            secret_cache_size: 10_000,
            secret_cache_ttl: Duration::from_secs(600),
            secret_cache_negative_ttl: Duration::from_secs(60),
            proxy: BTreeMap::new(),
            limits: BruteForceLimits::default(),
            external: ExternalConfig::default(),
            verified_cache_ttl: Duration::from_secs(300),
            oauth: OAuthConfig::default(),
        }
    }
}

/// Brute-force defence, counted in the shared store so every replica sees
/// the same totals.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BruteForceLimits {
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Failures from one client IP within the window before it is blocked (0 = off).
    pub max_failures_per_ip: u32,
    /// Failures against one (user, realm) within the window before it is blocked (0 = off).
    pub max_failures_per_user: u32,
    /// Added delay before answering a blocked attempt.
    #[serde(with = "humantime_serde")]
    pub block_delay: Duration,
    /// How long a sasl-auth replica trusts a counter it read from Redis as
    /// zero, so that an AUTH with nothing to claim (PLAIN, LOGIN) from a
    /// clean address for a clean user skips its Redis round trip. A failure
    /// on the replica forgets its entries at once; another replica's
    /// failures are seen when the entry expires (0 = read every time).
    #[serde(with = "humantime_serde")]
    pub clean_ttl: Duration,
}

impl Default for BruteForceLimits {
    fn default() -> Self {
        BruteForceLimits {
            window: Duration::from_secs(600),
            max_failures_per_ip: 20,
            max_failures_per_user: 10,
            block_delay: Duration::from_secs(2),
            clean_ttl: Duration::from_secs(1),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExternalConfig {
    /// Certificate identity (subject CN or SAN e-mail) → NAME@REALM.
    /// Unmapped identities are used as they are.
    pub map: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerRole {
    /// Port-25 style: AUTH optional, relaying only for trusted sources.
    Relay,
    /// Port-587 style (RFC 6409): STARTTLS offered, AUTH required before MAIL.
    Submission,
    /// Port-465 style (RFC 8314): implicit TLS, AUTH required before MAIL.
    Submissions,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub address: SocketAddr,
    pub role: ListenerRole,
    /// Require AUTH before MAIL; defaults to true for submission roles.
    #[serde(default)]
    pub require_auth: Option<bool>,
    /// Expect a PROXY protocol v2 header first (load balancers that cannot keep the client address).
    #[serde(default)]
    pub proxy_protocol: bool,
}

impl Listener {
    pub fn requires_auth(&self) -> bool {
        self.require_auth
            .unwrap_or(!matches!(self.role, ListenerRole::Relay))
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimeoutConfig {
    /// Waiting for a command (RFC 5321 §4.5.3.2: at least 5 minutes).
    #[serde(with = "humantime_serde")]
    pub command: Duration,
    /// Waiting for the next block of DATA (RFC 5321: 3 minutes).
    #[serde(with = "humantime_serde")]
    pub data_block: Duration,
    /// Whole-connection cap (slow-loris defence).
    #[serde(with = "humantime_serde")]
    pub session: Duration,
    /// TLS handshake.
    #[serde(with = "humantime_serde")]
    pub tls_handshake: Duration,
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        TimeoutConfig {
            command: Duration::from_secs(300),
            data_block: Duration::from_secs(180),
            session: Duration::from_secs(3600),
            tls_handshake: Duration::from_secs(30),
        }
    }
}

/// Under overload, sessions in progress finish first: while `sessions` are
/// in progress and the frontend's runtime is at least `behind` late, a new
/// connection waits (up to `greeting_hold`) for its `220`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdmissionConfig {
    /// Sessions in progress (greeted, and heard from in the last few
    /// milliseconds) at which new greetings may wait; 0: 8 per CPU.
    /// Eight ready sessions a CPU keep it busy while others wait on a
    /// hop (sasl-auth, Redis, an fsync); more only lengthen the queue every
    /// AUTH step waits in (BENCHMARKS.md, "Admission").
    pub sessions: usize,
    /// How late the frontend's runtime must be running ready work before
    /// new greetings wait: the sign that the CPUs, not the clients, are
    /// what sessions wait for.
    #[serde(with = "humantime_serde")]
    pub behind: Duration,
    /// The longest a greeting waits; 0 turns waiting off.
    #[serde(with = "humantime_serde")]
    pub greeting_hold: Duration,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            sessions: 0,
            behind: Duration::from_micros(250),
            greeting_hold: Duration::from_secs(1),
        }
    }
}

impl AdmissionConfig {
    /// `sessions`, with 0 resolved for a process that sees `cpus` CPUs.
    pub fn sessions_for(&self, cpus: usize) -> usize {
        if self.sessions == 0 {
            8 * cpus.max(1)
        } else {
            self.sessions
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrivacyConfig {
    pub noexpn: bool,
    pub novrfy: bool,
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        PrivacyConfig {
            noexpn: true,
            novrfy: true,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain. Reloaded when the file changes.
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
    /// PEM CA bundle for client certificates (EXTERNAL); unset = none requested.
    pub client_ca: Option<PathBuf>,
    /// Run without TLS at all (only for tests and trusted networks).
    pub disabled: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum AccessAction {
    Ok,
    Relay,
    Reject,
    Discard,
}

/// One access-map entry: an address, a domain or a network, and what to do.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessRule {
    /// `user@domain`, `domain`, or a CIDR network.
    pub key: String,
    pub action: AccessAction,
    #[serde(default)]
    pub message: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FrontendConfig {
    pub listeners: Vec<Listener>,
    /// gRPC health and admin (sessions) endpoint.
    pub admin_listen: SocketAddr,
    pub max_message_size: u64,
    pub max_recipients: usize,
    /// Simultaneous connections on this frontend (`confMAX_DAEMON_CHILDREN`).
    pub max_connections: usize,
    /// Simultaneous connections from one client address.
    pub max_connections_per_ip: usize,
    /// New connections per client address per second, summed over every
    /// frontend through the shared store (`confCONNECTION_RATE_THROTTLE`); 0 = off.
    pub connection_rate: u32,
    /// The window `connection_rate` counts over.
    #[serde(with = "humantime_serde")]
    pub connection_rate_window: Duration,
    /// Longest command line, CRLF included (RFC 5321 §4.5.3.1.4: 512 at least).
    pub max_line_length: usize,
    /// Longest AUTH line (RFC 4954 §4: 12288 octets).
    pub max_auth_line_length: usize,
    /// Bad commands before `421` and close.
    pub max_errors: u32,
    /// AUTH attempts per connection before `421` and close.
    pub max_auth_attempts: u32,
    pub timeouts: TimeoutConfig,
    pub admission: AdmissionConfig,
    /// Domains delivered here (`confCW_FILE`); `hostname` is always local.
    pub local_domains: WordList,
    /// Domains anyone may relay to (`relay_entire_domain`, access RELAY).
    pub relay_domains: WordList,
    /// Client networks that may relay without AUTH.
    pub trusted_networks: WordList,
    /// Client networks offered `XTRACE` (another authrelay's relay-queue
    /// continuing its trace here). It grants nothing, but it lets a client
    /// choose the trace its spans join, so like Postfix's XCLIENT it is for
    /// listed peers only: loopback by default; empty turns it off.
    pub xtrace_networks: WordList,
    pub access: Vec<AccessRule>,
    pub privacy: PrivacyConfig,
    pub tls: TlsConfig,
    /// Name the authenticated user in `Received:` (as the seed's header does).
    pub received_shows_auth: bool,
    /// On SIGTERM: how long transactions in flight may take to finish.
    #[serde(with = "humantime_serde")]
    pub drain_grace: Duration,
}

impl Default for FrontendConfig {
    fn default() -> Self {
        FrontendConfig {
            listeners: vec![
                Listener {
                    address: "127.0.0.1:2587".parse().expect("literal"),
                    role: ListenerRole::Submission,
                    require_auth: None,
                    proxy_protocol: false,
                },
                Listener {
                    address: "127.0.0.1:2525".parse().expect("literal"),
                    role: ListenerRole::Relay,
                    require_auth: None,
                    proxy_protocol: false,
                },
            ],
            admin_listen: "127.0.0.1:7340".parse().expect("literal"),
            max_message_size: 10_000_000,
            max_recipients: 100,
            max_connections: 1000,
            max_connections_per_ip: 50,
            connection_rate: 0,
            connection_rate_window: Duration::from_secs(1),
            max_line_length: 1000,
            max_auth_line_length: 12288,
            max_errors: 10,
            max_auth_attempts: 5,
            timeouts: TimeoutConfig::default(),
            admission: AdmissionConfig::default(),
            local_domains: WordList::default(),
            relay_domains: WordList::default(),
            trusted_networks: WordList::default(),
            xtrace_networks: WordList::from(["127.0.0.0/8", "::1/128"]),
            access: Vec::new(),
            privacy: PrivacyConfig::default(),
            tls: TlsConfig::default(),
            received_shows_auth: true,
            drain_grace: Duration::from_secs(30),
        }
    }
}

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

impl Config {
    /// Load `path` (if any) on top of the defaults, then the `AUTHRELAY__*`
    /// environment, then validate the whole.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    /// As [`Config::load`] with an explicit environment (tests).
    pub fn load_with_env(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = path {
            if !path.exists() {
                return Err(ConfigError::new(
                    "--config",
                    path.display().to_string(),
                    "no such file",
                ));
            }
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        let env: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__")))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(env)),
        );
        let raw = builder
            .build()
            .map_err(|e| ConfigError::new("(file)", "", e.to_string()))?;
        let cfg: Config = raw
            .try_deserialize()
            .map_err(ConfigError::from_deserialize)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Realms offered by DIGEST-MD5: the configured list, or the default realm.
    pub fn realms(&self) -> Vec<String> {
        if self.sasl.realms.is_empty() {
            vec![self.default_realm.clone()]
        } else {
            self.sasl.realms.iter().map(str::to_owned).collect()
        }
    }

    pub fn credential_db_path(&self) -> PathBuf {
        self.credential_store
            .path
            .clone()
            .unwrap_or_else(|| self.data_dir.join("credentials.redb"))
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.relay_queue
            .spool_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("spool"))
    }

    /// The AuthInfo map: `relay_queue.authinfo_file`, then the TOML entries.
    pub fn authinfo(&self) -> Result<AuthInfoMap, AuthInfoError> {
        let mut map = match &self.relay_queue.authinfo_file {
            Some(file) => AuthInfoMap::load(file)?,
            None => AuthInfoMap::default(),
        };
        map.add_entries(&self.relay_queue.authinfo)?;
        Ok(map)
    }

    /// Where `authrelay authinfo token set` and relay-queue keep refresh tokens.
    pub fn token_store_dir(&self) -> PathBuf {
        self.relay_queue
            .token_store_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("oauth"))
    }

    /// Outbound TLS policy for next hop `host`.
    pub fn outbound_tls(&self, host: &str) -> OutboundTls {
        let rq = &self.relay_queue;
        rq.tls_hosts
            .iter()
            .find(|(h, _)| h.eq_ignore_ascii_case(host))
            .map(|(_, p)| *p)
            .unwrap_or(rq.tls)
    }

    pub fn helo_name(&self) -> &str {
        if self.relay_queue.helo_name.is_empty() {
            &self.hostname
        } else {
            &self.relay_queue.helo_name
        }
    }

    /// Domains delivered locally: the configured ones plus `hostname`.
    pub fn is_local_domain(&self, domain: &str) -> bool {
        let domain = domain.trim_end_matches('.');
        domain.eq_ignore_ascii_case(&self.hostname)
            || self
                .frontend
                .local_domains
                .iter()
                .any(|d| d.eq_ignore_ascii_case(domain))
    }

    /// The effective configuration as TOML (for `authrelay config check`).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    /// Offered mechanisms, parsed (validation guarantees they parse).
    pub fn offered_mechanisms(&self) -> Vec<authrelay_sasl::Mechanism> {
        parse_mechs(&self.sasl.mechanisms)
    }

    pub fn trusted_mechanisms(&self) -> Vec<authrelay_sasl::Mechanism> {
        parse_mechs(&self.sasl.trusted)
    }
}

fn parse_mechs(list: &WordList) -> Vec<authrelay_sasl::Mechanism> {
    list.iter()
        .filter_map(authrelay_sasl::Mechanism::from_name)
        .collect()
}

fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// `$XDG_DATA_HOME/authrelay` when set, else `./authrelay-data`.
fn default_data_dir() -> PathBuf {
    match std::env::var_os("XDG_DATA_HOME") {
        Some(x) if !x.is_empty() => PathBuf::from(x).join("authrelay"),
        _ => PathBuf::from("authrelay-data"),
    }
}

#[cfg(test)]
mod tests;

impl Config {
    /// Mechanisms to offer a session in this state, in configured order:
    /// plain-text ones only on TLS unless allowed in the clear, bearer
    /// tokens (OAUTHBEARER, XOAUTH2) only on TLS and only with an issuer
    /// configured, `-PLUS` only with channel binding data, EXTERNAL only
    /// with a verified client certificate. The frontend renders EHLO from
    /// this and sasl-auth enforces the same rule, from the same configuration.
    pub fn mechanisms_for(
        &self,
        tls: bool,
        channel_binding: bool,
        client_cert: bool,
    ) -> Vec<authrelay_sasl::Mechanism> {
        self.offered_mechanisms()
            .into_iter()
            .filter(|m| tls || self.sasl.allow_plaintext_without_tls || !m.is_plaintext())
            .filter(|m| !m.uses_bearer_token() || (tls && !self.sasl.oauth.issuers.is_empty()))
            .filter(|m| channel_binding || !m.needs_channel_binding())
            .filter(|m| client_cert || *m != authrelay_sasl::Mechanism::External)
            .collect()
    }
}
