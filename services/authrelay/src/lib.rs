//! `authrelay`, the operator's binary.
//!
//! - `authrelay serve`: all four services in one process, calling each
//!   other in process, on embedded defaults; admin over private Unix
//!   sockets.
//! - `authrelay user add|passwd|delete|list`: the `saslpasswd` /
//!   `sasldblistusers` of this system, over gRPC to the credential-store,
//!   so they work the same against one process and against a cluster.
//! - `authrelay queue list|flush|delete|hold|release`: the queue.
//! - `authrelay config check`: the effective configuration and what is
//!   offered — the role of `sendmail -d0.1 -bt`.
//! - `authrelay authinfo test|token set`: try the next hop's AUTH, store an
//!   OAuth2 refresh token.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use authrelay_config::Config;
use authrelay_proto::credentials::v1 as cpb;
use authrelay_proto::credentials::v1::credential_store_client::CredentialStoreClient;
use authrelay_proto::queue::v1 as qpb;
use authrelay_proto::queue::v1::relay_queue_client::RelayQueueClient;
use clap::{Parser, Subcommand};

mod authinfo;
mod import;
mod limits;
mod serve;

#[derive(Parser)]
#[command(name = "authrelay", version, about = "An authenticated SMTP relay")]
struct Cli {
    /// TOML configuration file (AUTHRELAY__* environment variables override it).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every service in one process (the quick start).
    Serve,
    /// Manage users (saslpasswd, sasldblistusers).
    #[command(subcommand)]
    User(UserCommand),
    /// Inspect and steer the queue.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// The outbound AuthInfo map: test AUTH to a next hop, store OAuth2 refresh tokens.
    #[command(subcommand)]
    Authinfo(authinfo::AuthInfoCommand),
    /// Live SMTP sessions of every frontend; `sessions end ID` closes one with 421.
    Sessions {
        #[command(subcommand)]
        action: Option<SessionsCommand>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum SessionsCommand {
    /// Ask the frontend holding session ID to close it with 421.
    End { id: String },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user (fails if it exists). The password is read from stdin
    /// when it is not a terminal, else prompted twice — never from argv.
    Add(UserArgs),
    /// Set a new password for a user, creating it if needed.
    Passwd(UserArgs),
    /// Delete a user.
    Delete {
        #[arg(long, short = 'u')]
        realm: Option<String>,
        name: String,
    },
    /// List users, one line per user and mechanism (as sasldblistusers).
    List {
        #[arg(long, short = 'u')]
        realm: Option<String>,
        /// One JSON object per user.
        #[arg(long)]
        json: bool,
    },
    /// Import users from a Dovecot passwd-file or a Cyrus sasldb2 dump.
    Import(import::ImportArgs),
    /// Re-seal every stored secret under the current encryption key
    /// (credential_store.encryption_key_file), while serving.
    Reseal,
    /// Set this user's own sending limits (overriding [limits.per_user]),
    /// clear them, or show them.
    Limit(LimitArgs),
    /// Lift a suspension (the hard sending threshold was crossed) and
    /// forget the user's counts, on every frontend.
    Unlock {
        #[arg(long, short = 'u')]
        realm: Option<String>,
        name: String,
    },
    /// A user's sending limits, what they used of them, and any suspension.
    Show {
        #[arg(long, short = 'u')]
        realm: Option<String>,
        #[arg(long)]
        json: bool,
        name: String,
    },
}

#[derive(clap::Args)]
struct LimitArgs {
    #[arg(long, short = 'u')]
    realm: Option<String>,
    /// MAIL FROM per hour (0 = no limit for this user).
    #[arg(long)]
    messages_per_hour: Option<u64>,
    #[arg(long)]
    messages_per_day: Option<u64>,
    /// Accepted RCPT TO per hour (0 = no limit for this user).
    #[arg(long)]
    recipients_per_hour: Option<u64>,
    #[arg(long)]
    recipients_per_day: Option<u64>,
    /// Drop this user's overrides first: back to [limits.per_user].
    #[arg(long)]
    clear: bool,
    /// Only show (the default when nothing is set or cleared).
    #[arg(long, conflicts_with_all = ["clear", "messages_per_hour", "messages_per_day", "recipients_per_hour", "recipients_per_day"])]
    show: bool,
    #[arg(long)]
    json: bool,
    name: String,
}

#[derive(clap::Args)]
struct UserArgs {
    /// Realm (saslpasswd -u); default: the configured default realm.
    #[arg(long, short = 'u')]
    realm: Option<String>,
    /// Mechanisms this user may use (repeat or comma-separate); default: configured.
    #[arg(long = "mech", value_delimiter = ',')]
    mechanisms: Vec<String>,
    name: String,
}

#[derive(Subcommand)]
enum QueueCommand {
    /// Queued messages: id, age, sender, recipients, next try, last error.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Try everything now (or everything for one domain, like ETRN).
    Flush {
        domain: Option<String>,
    },
    Delete {
        id: String,
    },
    Hold {
        id: String,
    },
    Release {
        id: String,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the effective configuration, the mechanisms offered and
    /// trusted, and what this build supports. Exits non-zero on a bad one.
    Check,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("authrelay: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("authrelay: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut cfg = Config::load(cli.config.as_deref())?;
    if !matches!(cli.command, Command::Serve) {
        serve::local_admin_endpoints(&mut cfg);
    }
    match cli.command {
        Command::Serve => serve::serve(cfg).await,
        Command::User(u) => user(cfg, u).await,
        Command::Queue(q) => queue(cfg, q).await,
        Command::Sessions { action, json } => sessions(cfg, action, json).await,
        Command::Authinfo(a) => authinfo::run(cfg, a).await,
        Command::Config(ConfigCommand::Check) => {
            config_check(&cfg);
            Ok(())
        }
    }
}

fn config_check(cfg: &Config) {
    println!(
        "# authrelay {} — effective configuration",
        env!("CARGO_PKG_VERSION")
    );
    print!("{}", cfg.to_toml());
    let names = |v: Vec<authrelay_sasl::Mechanism>| {
        v.iter().map(|m| m.name()).collect::<Vec<_>>().join(" ")
    };
    println!();
    println!("# Mechanisms");
    println!(
        "offered (confAUTH_MECHANISMS):      {}",
        names(cfg.offered_mechanisms())
    );
    println!(
        "trusted for relaying (TRUST_AUTH_MECH): {}",
        names(cfg.trusted_mechanisms())
    );
    println!(
        "offered before STARTTLS:            {}",
        names(cfg.mechanisms_for(false, false, false))
    );
    println!(
        "offered after STARTTLS (TLS 1.3):   {}",
        names(cfg.mechanisms_for(true, true, false))
    );
    if cfg
        .offered_mechanisms()
        .contains(&authrelay_sasl::Mechanism::DigestMd5)
    {
        println!(
            "DIGEST-MD5 realms offered:          {}",
            cfg.realms().join(" ")
        );
        println!(
            "# A DIGEST-MD5 login as NAME@REALM hashed with an offered realm works for users whose password was set while that realm was offered; after changing sasl.realms, such users need `authrelay user passwd` (the hash cannot be made without the password)."
        );
    }
    let oauth = &cfg.sasl.oauth;
    if !oauth.issuers.is_empty() {
        println!();
        println!("# OAuth token issuers (OAUTHBEARER, XOAUTH2; TLS only)");
        for i in &oauth.issuers {
            println!(
                "issuer {}: keys from {}; audience {}; user = claim {:?}{}{}",
                i.issuer,
                i.jwks_uri.clone().unwrap_or_else(|| i.discovery_url()),
                i.audience.iter().collect::<Vec<_>>().join(" "),
                i.user_claim(),
                i.realm
                    .as_deref()
                    .map(|r| format!(" (@{r} when it has no realm)"))
                    .unwrap_or_default(),
                if i.require_local_user {
                    "; must exist in credential-store"
                } else {
                    ""
                }
            );
        }
        println!(
            "algorithms {}; leeway {}s; JWKS refreshed every {}s (or its max-age), refetched for an unknown kid at most every {}s",
            oauth.algorithms.iter().collect::<Vec<_>>().join(" "),
            oauth.leeway.as_secs(),
            oauth.jwks_refresh.as_secs(),
            oauth.jwks_min_refresh.as_secs()
        );
    }
    println!();
    println!("# Sealed SASL exchanges");
    println!(
        "a challenge's state is good for {}s and one answer, recorded as spent {}",
        cfg.sasl.exchange_ttl.as_secs(),
        match cfg.sasl.exchange_claims {
            authrelay_config::ExchangeClaims::Replica => {
                "in the memory of the sasl-auth replica that takes it"
            }
            authrelay_config::ExchangeClaims::Shared => "in Redis, for every replica",
        }
    );
    let l = &cfg.sasl.limits;
    println!();
    println!("# Brute-force limits");
    println!(
        "window {}s; max failures per client address {}; per user {}; delay when blocked {}ms; \
         counts read as zero trusted for {}ms",
        l.window.as_secs(),
        l.max_failures_per_ip,
        l.max_failures_per_user,
        l.block_delay.as_millis(),
        l.clean_ttl.as_millis()
    );
    if !cfg.relay_queue.token_sources.is_empty() {
        let store = relay_queue::oauth::RefreshTokenStore::new(cfg);
        println!();
        println!("# OAuth2 token sources (AuthInfo O:NAME)");
        for (name, s) in &cfg.relay_queue.token_sources {
            let grant = match s.grant {
                authrelay_config::OAuthGrant::ClientCredentials => "client-credentials".to_owned(),
                authrelay_config::OAuthGrant::RefreshToken => format!(
                    "refresh-token ({})",
                    if store.exists(name) {
                        "refresh token stored"
                    } else {
                        "NO refresh token stored: `authrelay authinfo token set HOST`"
                    }
                ),
            };
            println!("{name}: {grant}, endpoint {}", s.token_url);
        }
    }
    let u = &cfg.limits.per_user;
    println!();
    println!("# Account limits (per authenticated user, all frontends together)");
    if u.enabled {
        let n = |v: u64| {
            if v == 0 {
                "none".to_owned()
            } else {
                v.to_string()
            }
        };
        println!(
            "messages per hour {}, per day {}; recipients per hour {}, per day {}",
            n(u.messages_per_hour),
            n(u.messages_per_day),
            n(u.recipients_per_hour),
            n(u.recipients_per_day)
        );
        if u.suspend_factor == 0 {
            println!("never suspended (suspend_factor = 0)");
        } else {
            println!(
                "suspended at {}x a limit in attempts, until `authrelay user unlock`",
                u.suspend_factor
            );
        }
        if cfg.redis.url.is_empty() {
            println!(
                "# counted in the process; overrides and suspensions saved in {}",
                cfg.data_dir.join("account-limits.json").display()
            );
        }
    } else {
        println!("off (limits.per_user.enabled = false)");
    }
    println!();
    println!("# Compiled with");
    println!(
        "SASL: {}",
        authrelay_sasl::Mechanism::ALL
            .iter()
            .map(|m| m.name())
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("TLS: rustls (TLS 1.2, TLS 1.3), STARTTLS, implicit TLS (RFC 8314)");
    println!("credential backends: file (redb), postgres");
    println!(
        "session store: {}",
        if cfg.redis.url.is_empty() {
            "in-process (no redis.url)"
        } else {
            "redis"
        }
    );
}

fn admin_request<T>(cfg: &Config, msg: T) -> anyhow::Result<tonic::Request<T>> {
    let mut req = tonic::Request::new(msg);
    if let Some(token) =
        authrelay_grpc_tls::guard::read_token(cfg.admin.token_file.as_deref(), "admin.token_file")?
    {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
    }
    Ok(req)
}

fn credential_client(
    cfg: &Config,
) -> anyhow::Result<CredentialStoreClient<tonic::transport::Channel>> {
    let ch = authrelay_grpc_tls::channel(
        cfg,
        cfg.endpoints.credential_store.as_slice(),
        cfg.endpoints.timeout,
    )
    .map_err(|e| anyhow::anyhow!("endpoints.credential_store: {e}"))?;
    Ok(CredentialStoreClient::new(ch))
}

fn status_error(what: &str, endpoint: &[String], s: tonic::Status) -> anyhow::Error {
    match s.code() {
        tonic::Code::Unavailable => anyhow::anyhow!(
            "{what}: cannot reach the service at {} ({}); is `authrelay serve` (or the service) running?",
            endpoint.join(","),
            s.message()
        ),
        tonic::Code::Unauthenticated => anyhow::anyhow!(
            "{what}: refused by the service: {} — set admin.token_file to the file holding its token",
            s.message()
        ),
        _ => anyhow::anyhow!("{what}: {}", s.message()),
    }
}

/// The password from stdin (not a terminal: first line) or a double prompt.
fn read_password() -> anyhow::Result<Vec<u8>> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        let a = rpassword::prompt_password("Password: ")?;
        let b = rpassword::prompt_password("Again (for verification): ")?;
        if a != b {
            anyhow::bail!("passwords do not match");
        }
        Ok(a.into_bytes())
    } else {
        let mut buf = Vec::new();
        stdin.lock().take(64 * 1024).read_to_end(&mut buf)?;
        // One line: drop the line ending a pipe or here-doc adds.
        let end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
        buf.truncate(end);
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        Ok(buf)
    }
}

async fn user(cfg: Config, cmd: UserCommand) -> anyhow::Result<()> {
    let mut client = credential_client(&cfg)?;
    let eps = cfg.endpoints.credential_store.as_slice().to_vec();
    match cmd {
        UserCommand::Add(a) => put_user(&cfg, &mut client, a, true).await,
        UserCommand::Passwd(a) => put_user(&cfg, &mut client, a, false).await,
        UserCommand::Import(a) => import::run(&cfg, &mut client, a).await,
        UserCommand::Limit(a) => limits::limit(&cfg, a).await,
        UserCommand::Unlock { realm, name } => limits::unlock(&cfg, realm, &name).await,
        UserCommand::Show { realm, json, name } => limits::show(&cfg, realm, &name, json).await,
        UserCommand::Reseal => {
            let r = client
                .reseal(admin_request(&cfg, cpb::ResealRequest {})?)
                .await
                .map_err(|s| status_error("user reseal", &eps, s))?
                .into_inner();
            println!(
                "resealed {} secret(s), {} already current; key id: {}",
                r.resealed,
                r.unchanged,
                if r.key_id.is_empty() {
                    "none (stored unsealed)"
                } else {
                    &r.key_id
                }
            );
            Ok(())
        }
        UserCommand::Delete { realm, name } => {
            let realm = realm.unwrap_or_else(|| cfg.default_realm.clone());
            client
                .delete_user(admin_request(
                    &cfg,
                    cpb::DeleteUserRequest {
                        name: name.clone(),
                        realm: realm.clone(),
                    },
                )?)
                .await
                .map_err(|s| status_error("user delete", &eps, s))?;
            println!("deleted user: {name} realm: {realm}");
            Ok(())
        }
        UserCommand::List { realm, json } => {
            let users = client
                .list_users(admin_request(
                    &cfg,
                    cpb::ListUsersRequest {
                        realm: realm.unwrap_or_default(),
                    },
                )?)
                .await
                .map_err(|s| status_error("user list", &eps, s))?
                .into_inner()
                .users;
            // Suspensions live with the frontends' shared state: a listing
            // without them is still a listing, with a warning.
            let suspended = limits::suspended(&cfg).await.unwrap_or_else(|e| {
                eprintln!("authrelay: suspensions not shown: {e:#}");
                Default::default()
            });
            let mut out = std::io::stdout().lock();
            for u in users {
                let s = suspended.get(&format!("{}@{}", u.name, u.realm));
                if json {
                    let mut v = serde_json::json!({"user": u.name, "realm": u.realm, "mechanisms": u.mechanisms, "suspended": s.is_some()});
                    if let Some(s) = s {
                        v["suspension"] = limits::suspension_json(s);
                    }
                    writeln!(out, "{v}")?;
                } else {
                    for m in &u.mechanisms {
                        writeln!(out, "user: {} realm: {} mech: {}", u.name, u.realm, m)?;
                    }
                    if let Some(s) = s {
                        writeln!(
                            out,
                            "user: {} realm: {} suspended: {}",
                            u.name,
                            u.realm,
                            limits::suspension_text(s)
                        )?;
                    }
                }
            }
            Ok(())
        }
    }
}

async fn put_user(
    cfg: &Config,
    client: &mut CredentialStoreClient<tonic::transport::Channel>,
    a: UserArgs,
    create_only: bool,
) -> anyhow::Result<()> {
    let realm = a.realm.unwrap_or_else(|| cfg.default_realm.clone());
    let password = read_password()?;
    let resp = client
        .put_user(admin_request(
            cfg,
            cpb::PutUserRequest {
                name: a.name.clone(),
                realm: realm.clone(),
                password,
                // passwd without --mech keeps the user's mechanisms (read
                // and replaced in one transaction on the server).
                keep_mechanisms: !create_only && a.mechanisms.is_empty(),
                mechanisms: a.mechanisms,
                create_only,
            },
        )?)
        .await
        .map_err(|s| {
            status_error(
                if create_only {
                    "user add"
                } else {
                    "user passwd"
                },
                cfg.endpoints.credential_store.as_slice(),
                s,
            )
        })?
        .into_inner();
    println!(
        "{} user: {} realm: {} mechs: {}",
        if resp.created { "created" } else { "updated" },
        a.name,
        realm,
        resp.mechanisms.join(" ")
    );
    Ok(())
}

/// Each relay-queue replica has its own spool, so every queue command goes
/// to every replica behind `endpoints.relay_queue` (a headless Service name
/// resolves to each pod): a list is the union, with the replica named when
/// there are several; a flush counts over all; a message is deleted, held or
/// released where it is. A replica that cannot be reached is reported and
/// makes the command fail, after the others have answered.
async fn queue(cfg: Config, cmd: QueueCommand) -> anyhow::Result<()> {
    let eps = cfg.endpoints.relay_queue.as_slice().to_vec();
    let replicas = authrelay_grpc_tls::replica_channels(&cfg, &eps, cfg.endpoints.timeout)
        .await
        .map_err(|e| anyhow::anyhow!("endpoints.relay_queue: {e}"))?;
    let several = replicas.len() > 1;
    let mut unreachable: Vec<anyhow::Error> = Vec::new();
    let mut failed = |what: &'static str, replica: &str, s: tonic::Status| {
        let e = status_error(what, &[replica.to_owned()], s);
        eprintln!("authrelay: {e:#}");
        unreachable.push(e);
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    match &cmd {
        QueueCommand::List { json } => {
            let mut listed = 0;
            for (replica, ch) in &replicas {
                let entries = match RelayQueueClient::new(ch.clone())
                    .list_queue(admin_request(&cfg, qpb::ListQueueRequest {})?)
                    .await
                {
                    Ok(r) => r.into_inner().entries,
                    Err(s) => {
                        failed("queue list", replica, s);
                        continue;
                    }
                };
                listed += entries.len();
                for e in entries {
                    print_queue_entry(&e, now, *json, several.then_some(replica.as_str()));
                }
            }
            if !json && listed == 0 && unreachable.is_empty() {
                println!("queue is empty");
            }
        }
        QueueCommand::Flush { domain } => {
            let mut scheduled = 0;
            for (replica, ch) in &replicas {
                let req = qpb::FlushRequest {
                    domain: domain.clone().unwrap_or_default(),
                };
                match RelayQueueClient::new(ch.clone())
                    .flush(admin_request(&cfg, req)?)
                    .await
                {
                    Ok(r) => scheduled += r.into_inner().scheduled,
                    Err(s) => failed("queue flush", replica, s),
                }
            }
            println!("{scheduled} message(s) scheduled for delivery now");
        }
        QueueCommand::Delete { id } | QueueCommand::Hold { id } | QueueCommand::Release { id } => {
            let (what, done) = match &cmd {
                QueueCommand::Delete { .. } => ("queue delete", "deleted"),
                QueueCommand::Hold { .. } => ("queue hold", "held"),
                _ => ("queue release", "released"),
            };
            let mut found = false;
            for (replica, ch) in &replicas {
                let req = admin_request(
                    &cfg,
                    qpb::MessageRef {
                        queue_id: id.clone(),
                    },
                )?;
                let mut client = RelayQueueClient::new(ch.clone());
                let answer = match &cmd {
                    QueueCommand::Delete { .. } => client.delete_message(req).await.map(drop),
                    QueueCommand::Hold { .. } => client.hold_message(req).await.map(drop),
                    _ => client.release_message(req).await.map(drop),
                };
                match answer {
                    Ok(()) => {
                        found = true;
                        break;
                    }
                    // Not this replica's message: ask the next.
                    Err(s) if s.code() == tonic::Code::NotFound => {}
                    // A malformed id is malformed everywhere.
                    Err(s) if s.code() == tonic::Code::InvalidArgument => {
                        return Err(status_error(what, &eps, s));
                    }
                    Err(s) => failed(what, replica, s),
                }
            }
            if found {
                println!("{id}: {done}");
            } else if unreachable.is_empty() {
                anyhow::bail!("{what}: no such message {id} in the queue of any replica");
            }
        }
    }
    match unreachable.len() {
        0 => Ok(()),
        n => anyhow::bail!(
            "{n} of {} relay-queue replica(s) did not answer",
            replicas.len()
        ),
    }
}

/// One `queue list` line (text or JSON), naming its replica when given.
fn print_queue_entry(e: &qpb::QueueEntry, now: i64, json: bool, replica: Option<&str>) {
    if json {
        let mut v = serde_json::json!({
            "id": e.queue_id, "age_secs": now - e.queued_at, "from": e.mail_from,
            "recipients": e.recipients, "size": e.size, "attempts": e.attempts,
            "next_attempt_in_secs": (e.next_attempt - now).max(0), "last_error": e.last_error, "held": e.held,
        });
        if let Some(r) = replica {
            v["replica"] = r.into();
        }
        println!("{v}");
        return;
    }
    println!(
        "{}{} age={}s size={} from=<{}> to={} attempts={} next_try_in={}s{}{}",
        e.queue_id,
        if e.held { " (held)" } else { "" },
        now - e.queued_at,
        e.size,
        e.mail_from,
        e.recipients
            .iter()
            .map(|r| format!("<{r}>"))
            .collect::<Vec<_>>()
            .join(","),
        e.attempts,
        (e.next_attempt - now).max(0),
        if e.last_error.is_empty() {
            String::new()
        } else {
            format!(" last_error=\"{}\"", e.last_error)
        },
        replica.map(|r| format!(" replica={r}")).unwrap_or_default(),
    );
}

async fn sessions(cfg: Config, action: Option<SessionsCommand>, json: bool) -> anyhow::Result<()> {
    use authrelay_proto::frontend::v1 as fpb;
    let eps = cfg.endpoints.frontend.as_slice().to_vec();
    let ch = authrelay_grpc_tls::channel(&cfg, &eps, cfg.endpoints.timeout)
        .map_err(|e| anyhow::anyhow!("endpoints.frontend: {e}"))?;
    let mut client = fpb::sessions_client::SessionsClient::new(ch);
    match action {
        Some(SessionsCommand::End { id }) => {
            let found = client
                .end_session(admin_request(
                    &cfg,
                    fpb::EndSessionRequest { id: id.clone() },
                )?)
                .await
                .map_err(|s| status_error("sessions end", &eps, s))?
                .into_inner()
                .found;
            if !found {
                anyhow::bail!("no live session {id}");
            }
            println!("{id}: end requested");
        }
        None => {
            let list = client
                .list_sessions(admin_request(&cfg, fpb::ListSessionsRequest {})?)
                .await
                .map_err(|s| status_error("sessions", &eps, s))?
                .into_inner()
                .sessions;
            for s in list {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "id": s.id, "instance": s.instance, "client": s.client_address, "listener": s.listener,
                            "tls_version": s.tls_version, "tls_cipher": s.tls_cipher, "auth_id": s.auth_id,
                            "mechanism": s.mechanism, "started_at": s.started_at,
                        })
                    );
                } else {
                    println!(
                        "{} instance={} client={} listener={} tls={} authid={} mech={} started_at={}",
                        s.id,
                        s.instance,
                        s.client_address,
                        s.listener,
                        if s.tls_version.is_empty() {
                            "-"
                        } else {
                            &s.tls_version
                        },
                        if s.auth_id.is_empty() {
                            "-"
                        } else {
                            &s.auth_id
                        },
                        if s.mechanism.is_empty() {
                            "-"
                        } else {
                            &s.mechanism
                        },
                        s.started_at
                    );
                }
            }
        }
    }
    Ok(())
}
