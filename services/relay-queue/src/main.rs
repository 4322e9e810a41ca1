use clap::Parser;

/// authrelay relay-queue: durable spool and delivery.
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
    let _telemetry = authrelay_telemetry::init("relay-queue", &cfg);
    relay_queue::main_with(cfg).await
}
