//! Logging and tracing set-up shared by every service.
//!
//! Log lines are one event each, grep-able `key=value` (or JSON), in the
//! spirit of sendmail's `AUTH=server, relay=…, mech=…, bits=…`.

use authrelay_config::{LogConfig, LogFormat};
use tracing_subscriber::EnvFilter;

/// Install the global subscriber for `service`. `RUST_LOG` wins over the
/// configured level. Safe to call twice (the second call is a no-op), which
/// the all-in-one binary relies on.
pub fn init(service: &str, log: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let result = match log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    if result.is_ok() {
        tracing::debug!(service, "logging initialised");
    }
}

/// Resolves on SIGTERM or SIGINT: the one shutdown trigger every service uses.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested");
}

/// Print where a service listens, on stdout, flushed: operators read it, and
/// the test harness reads it to learn ephemeral ports.
pub fn announce(service: &str, what: &str, addr: impl std::fmt::Display) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{service} listening on {addr} ({what})");
    let _ = out.flush();
}
