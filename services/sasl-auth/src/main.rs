use clap::Parser;

/// authrelay sasl-auth: the SASL server, over gRPC.
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
    let _telemetry = authrelay_telemetry::init("sasl-auth", &cfg);
    sasl_auth::main_with(cfg).await
}
