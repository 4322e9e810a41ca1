//! `authrelay authinfo …`: the outbound side's credentials.
//!
//! - `authinfo test HOST[:PORT]` connects to the next hop as relay-queue
//!   would (STARTTLS per `relay_queue.tls`/`tls_hosts`), fetches a token
//!   when the entry names a token source, authenticates, and QUITs without
//!   sending mail: the answer to "will the hub take us?" before mail waits.
//! - `authinfo token set HOST` stores the refresh token of the entry's
//!   token source, sealed, where relay-queue reads it. It reads the token
//!   from stdin (or a prompt), never from argv, and must run where
//!   relay-queue's data directory is (`kubectl exec` into its pod).

use std::io::{IsTerminal, Read};

use authrelay_config::{AuthInfoMap, Config, OAuthGrant, parse_host_port};
use clap::Subcommand;
use relay_queue::client::{Hop, probe};
use relay_queue::oauth::{RefreshTokenStore, Secret, TokenSources};
use relay_queue::tls::OutboundTlsConfigs;

#[derive(Subcommand)]
pub enum AuthInfoCommand {
    /// Connect to the next hop HOST (or HOST:PORT), STARTTLS, AUTH as its
    /// AuthInfo entry says (fetching a token for a token source), QUIT.
    /// Sends no mail. Exit 0 when the hop accepted us.
    Test { host: String },
    /// Refresh tokens of `grant = "refresh-token"` sources.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Store (or replace) the refresh token for HOST's token source (or
    /// the source named HOST), sealed. The token is read from stdin, or
    /// prompted for on a terminal.
    Set { host: String },
}

pub async fn run(cfg: Config, cmd: AuthInfoCommand) -> anyhow::Result<()> {
    let map = cfg.authinfo().map_err(|e| e.to_config_error())?;
    match cmd {
        AuthInfoCommand::Test { host } => test(&cfg, &map, &host).await,
        AuthInfoCommand::Token(TokenCommand::Set { host }) => token_set(&cfg, &map, &host),
    }
}

/// The port of the configured next hop `host` (smarthost or a route), else
/// the MX port.
fn next_hop_port(cfg: &Config, host: &str) -> u16 {
    let rq = &cfg.relay_queue;
    std::iter::once(rq.smarthost.as_str())
        .chain(rq.routes.values().map(String::as_str))
        .filter_map(|hop| parse_host_port(hop).ok())
        .find(|(h, _)| h.eq_ignore_ascii_case(host))
        .map_or(rq.mx_port, |(_, p)| p)
}

async fn test(cfg: &Config, map: &AuthInfoMap, target: &str) -> anyhow::Result<()> {
    let (host, port) = match parse_host_port(target) {
        Ok((h, p)) if target.contains(':') => (h, p),
        _ => (target.to_owned(), next_hop_port(cfg, target)),
    };
    let Some(info) = map.lookup(&host) else {
        anyhow::bail!(
            "authinfo test: no AuthInfo entry for {host} (relay_queue.authinfo_file / [[relay_queue.authinfo]])"
        );
    };
    let tokens = TokenSources::new(cfg)?;
    let source = info.token_source().and_then(|n| tokens.get(n));
    let tls = OutboundTlsConfigs::new(cfg.relay_queue.tls_ca_file.as_deref())?;
    let hop = Hop {
        host: &host,
        port,
        addr: None,
        helo: cfg.helo_name(),
        timeout: cfg.relay_queue.connect_timeout,
        tls: cfg.outbound_tls(&host),
        authinfo: Some(info),
        tokens: source.map(|s| &**s),
    };
    let via = match info.token_source() {
        Some(name) => format!("token source {name}"),
        None => "password".to_owned(),
    };
    let report = probe(&hop, &tls)
        .await
        .map_err(|e| anyhow::anyhow!("authinfo test {host}:{port} ({via}): {e}"))?;
    match report.mechanism {
        Some(mech) => {
            println!(
                "AUTH=client, relay={host}:{port}, tls={}, mech={mech}: authenticated with {via}",
                if report.tls { "yes" } else { "no" }
            );
            Ok(())
        }
        None => anyhow::bail!(
            "authinfo test {host}:{port}: the hop offers no AUTH{} (tls={})",
            if report.offered.is_empty() {
                String::new()
            } else {
                format!(" we can use (offered: {})", report.offered.join(" "))
            },
            if report.tls { "yes" } else { "no" }
        ),
    }
}

fn token_set(cfg: &Config, map: &AuthInfoMap, target: &str) -> anyhow::Result<()> {
    let name = match map.lookup(target).and_then(|e| e.token_source()) {
        Some(n) => n.to_owned(),
        None if cfg.relay_queue.token_sources.contains_key(target) => target.to_owned(),
        None => anyhow::bail!(
            "authinfo token set: neither an AuthInfo entry with a token source (O:NAME) for {target:?} nor a token source of that name"
        ),
    };
    let source = &cfg.relay_queue.token_sources[&name];
    if source.grant != OAuthGrant::RefreshToken {
        anyhow::bail!(
            "authinfo token set: token source {name} uses grant = \"client-credentials\"; only \"refresh-token\" sources keep a token"
        );
    }
    let token = read_token()?;
    let store = RefreshTokenStore::new(cfg);
    store
        .save(&name, &token)
        .map_err(|e| anyhow::anyhow!("authinfo token set: {e}"))?;
    println!(
        "refresh token for token source {name} stored sealed in {}",
        store.path(&name).display()
    );
    Ok(())
}

/// One line from stdin, or a prompt without echo on a terminal.
fn read_token() -> anyhow::Result<Secret> {
    let stdin = std::io::stdin();
    let text = if stdin.is_terminal() {
        rpassword::prompt_password("Refresh token: ")?
    } else {
        let mut buf = Vec::new();
        stdin.lock().take(64 * 1024).read_to_end(&mut buf)?;
        let text = String::from_utf8(buf)
            .map_err(|_| anyhow::anyhow!("authinfo token set: the token is not UTF-8"))?;
        text.lines().next().unwrap_or("").trim().to_owned()
    };
    // RFC 6749 Appendix A.17: refresh-token = 1*VSCHAR.
    if text.is_empty() || !text.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        anyhow::bail!(
            "authinfo token set: expected one line holding the refresh token (printable ASCII)"
        );
    }
    Ok(Secret::new(text))
}
