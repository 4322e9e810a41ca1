//! `[frontend]`: listeners, TLS, relay policy, timeouts, admission under
//! overload and the other knobs of the ESMTP side.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::WordList;

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
