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
mod backends;
mod frontend;
mod lists;
pub mod oauth;
mod sasl;
mod validate;

pub mod token_source;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use authinfo::{AuthInfo, AuthInfoError, AuthInfoMap, Password};
pub use lists::WordList;
pub use oauth::{Issuer, OAuthConfig};
pub use validate::{ConfigError, parse_host_port, parse_network};

pub use authinfo::AuthSecret;
pub use backends::{
    AuthInfoEntry, CredentialBackend, CredentialStoreConfig, DeliveryMode, OutboundTls,
    RelayQueueConfig, ServiceListen,
};
pub use frontend::{
    AccessAction, AccessRule, AdmissionConfig, FrontendConfig, Listener, ListenerRole,
    PrivacyConfig, TimeoutConfig, TlsConfig,
};
pub use sasl::{BruteForceLimits, ExchangeClaims, ExternalConfig, SaslConfig};
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
