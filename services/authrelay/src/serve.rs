//! `authrelay serve`: the four services in one process, calling each other
//! in process, with the admin APIs on private Unix sockets — and how the
//! admin commands find those sockets.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use authrelay_config::Config;

/// Where `authrelay serve` puts its admin sockets: a 0700 directory in
/// the data directory, so only the owner reaches them.
fn run_dir(cfg: &Config) -> PathBuf {
    cfg.data_dir.join("run")
}

const CREDENTIAL_STORE_SOCK: &str = "credential-store.sock";
const RELAY_QUEUE_SOCK: &str = "relay-queue.sock";
const FRONTEND_SOCK: &str = "frontend.sock";

/// All four services in one process, calling each other in process.
///
/// Nothing internal listens on a network port: the frontend holds
/// sasl-auth, sasl-auth holds credential-store, and the frontend hands
/// messages to relay-queue directly. The admin APIs (users, queue,
/// sessions) are served on Unix sockets in `DATA_DIR/run` (0700), which the
/// admin commands find on their own — any other local user reaches nothing.
pub(crate) async fn serve(mut cfg: Config) -> anyhow::Result<()> {
    let _telemetry = authrelay_telemetry::init("authrelay", &cfg);
    // Before anything binds or opens: a SIGTERM during start-up waits for it.
    let shutdown = authrelay_telemetry::shutdown_signal();
    authrelay_telemetry::private_fs::private_dir(&cfg.data_dir)
        .with_context(|| format!("data_dir {}", cfg.data_dir.display()))?;
    let run = run_dir(&cfg);
    private_dir(&run).with_context(|| format!("{}", run.display()))?;
    let state = authrelay_state::SharedState::connect(&cfg.redis).await?;
    // In one process nothing crosses a network: internal_tls is for
    // separate pods (and four services cannot share one health_listen).
    if cfg.internal_tls.enabled || cfg.internal_tls.health_listen.is_some() {
        tracing::info!("internal_tls ignored by the all-in-one `authrelay serve`");
        cfg.internal_tls = Default::default();
    }
    cfg.credential_store.listen_unix = Some(run.join(CREDENTIAL_STORE_SOCK));
    cfg.relay_queue.listen_unix = Some(run.join(RELAY_QUEUE_SOCK));
    cfg.sasl_auth.listen_unix = None;
    let mut fe = smtp_frontend::bind_smtp(&cfg).await?;
    fe.admin_unix = Some(authrelay_grpc_tls::bind_unix(
        "frontend.admin_listen",
        &run.join(FRONTEND_SOCK),
    )?);

    // Admin calls on the private sockets (or with admin.token_file's
    // token); the internal APIs (GetSecret, Enqueue) to nobody: in one
    // process they are function calls.
    let guard = || {
        authrelay_grpc_tls::guard::Policy::from_config(&cfg)
            .map(authrelay_grpc_tls::guard::GuardLayer::new)
    };
    let (guard_fe, guard_cs, guard_rq) = (guard()?, guard()?, guard()?);
    let creds = credential_store::open(&cfg, Some(state.clone())).await?;
    sasl_auth::prepare(&cfg).await?;
    let sasl = sasl_auth::SaslService::with_credentials(
        cfg.clone(),
        state.clone(),
        authrelay_grpc_tls::api::CredentialStoreApi::Local(creds.clone()),
        // Nobody else opens this process's sealed exchanges.
        sasl_auth::ExchangeKeys::ephemeral(),
    )?;
    let queue = Arc::new(relay_queue::QueueService::new(relay_queue::Queue::open(
        cfg.clone(),
    )?));
    println!(
        "data directory {} ; session store {} ; admin sockets in {}",
        cfg.data_dir.display(),
        if cfg.redis.url.is_empty() {
            "in-process"
        } else {
            "redis"
        },
        run.display()
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let frontend = tokio::spawn(smtp_frontend::serve(
        cfg.clone(),
        state,
        fe,
        true,
        smtp_frontend::Backends::InProcess(Box::new((
            smtp_frontend::SaslAuthApi::Local(Arc::new(sasl)),
            smtp_frontend::QueueApi::Local(queue.clone()),
        ))),
        guard_fe,
        stopped(),
    ));
    let admin_creds = tokio::spawn(credential_store::serve(
        cfg.clone(),
        None,
        creds,
        guard_cs,
        stopped(),
    ));
    let queue = tokio::spawn(relay_queue::serve_queue(
        cfg.clone(),
        None,
        queue,
        guard_rq,
        stopped(),
    ));

    let mut tasks = [
        ("smtp-frontend", frontend),
        ("credential-store", admin_creds),
        ("relay-queue", queue),
    ];
    tokio::select! {
        _ = shutdown => {},
        (res, i, _) = futures_select_any(&mut tasks) => {
            let name = i;
            match res {
                Ok(Ok(())) => anyhow::bail!("{name} stopped unexpectedly"),
                Ok(Err(e)) => anyhow::bail!("{name}: {e:#}"),
                Err(e) => anyhow::bail!("{name} panicked: {e}"),
            }
        }
    }
    // The frontend drains first (transactions in flight still need the
    // queue); the back-end services stop with it.
    let _ = stop_tx.send(true);
    for (name, task) in tasks {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("authrelay: {name}: {e:#}"),
            Err(e) => eprintln!("authrelay: {name}: {e}"),
        }
    }
    Ok(())
}

/// A directory only its owner may enter, whatever the umask; an existing
/// one is tightened.
fn private_dir(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
}

/// The admin commands against `authrelay serve` on this machine: an
/// endpoint left at its built-in default goes to serve's admin socket when
/// that socket exists in the data directory.
pub(crate) fn local_admin_endpoints(cfg: &mut Config) {
    let defaults = authrelay_config::Endpoints::default();
    let run = run_dir(cfg);
    let pick = |current: &mut authrelay_config::WordList,
                default: &authrelay_config::WordList,
                sock: &str| {
        // unix: endpoints are absolute; data_dir may be relative.
        let path = std::path::absolute(run.join(sock)).unwrap_or_else(|_| run.join(sock));
        if current.as_slice() == default.as_slice() && path.exists() {
            *current = vec![format!("unix:{}", path.display())].into();
        }
    };
    pick(
        &mut cfg.endpoints.credential_store,
        &defaults.credential_store,
        CREDENTIAL_STORE_SOCK,
    );
    pick(
        &mut cfg.endpoints.relay_queue,
        &defaults.relay_queue,
        RELAY_QUEUE_SOCK,
    );
    pick(
        &mut cfg.endpoints.frontend,
        &defaults.frontend,
        FRONTEND_SOCK,
    );
}

type ServiceTask = tokio::task::JoinHandle<anyhow::Result<()>>;

/// Resolves when the first of the service tasks ends (which it should not).
async fn futures_select_any(
    tasks: &mut [(&'static str, ServiceTask); 3],
) -> (
    Result<anyhow::Result<()>, tokio::task::JoinError>,
    &'static str,
    (),
) {
    let [(n0, t0), (n1, t1), (n2, t2)] = tasks;
    tokio::select! {
        r = t0 => (r, *n0, ()),
        r = t1 => (r, *n1, ()),
        r = t2 => (r, *n2, ()),
    }
}
