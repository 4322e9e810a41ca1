use clap::Parser;

/// authrelay credential-store: serves per-mechanism secrets over gRPC.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// TOML configuration file (AUTHRELAY__* environment variables override it).
    #[arg(long)]
    config: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cfg = authrelay_config::Config::load(args.config.as_deref())?;
    let _telemetry = authrelay_telemetry::init("credential-store", &cfg);
    credential_store::main_with(cfg).await
}
