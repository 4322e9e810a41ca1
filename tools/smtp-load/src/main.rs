use std::time::Duration;

use clap::Parser;

/// N concurrent SMTP clients for D seconds: connect, EHLO, [STARTTLS],
/// AUTH, [MAIL/RCPT/DATA], QUIT. Works against any SMTP server.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// host:port
    #[arg(long, default_value = "127.0.0.1:2525")]
    server: String,
    #[arg(long, short = 'c', default_value_t = 16)]
    concurrency: usize,
    /// e.g. 10s, 1m
    #[arg(long, short = 'd', default_value = "10s")]
    duration: humantime::Duration,
    /// SASL mechanism; omit for no AUTH.
    #[arg(long)]
    mech: Option<String>,
    #[arg(long)]
    starttls: bool,
    /// Implicit TLS (port 465 style).
    #[arg(long)]
    tls: bool,
    /// Login name; `{n}` becomes the user number.
    #[arg(long, default_value = "load{n}")]
    user: String,
    /// How many users to spread logins over.
    #[arg(long, default_value_t = 1)]
    users: usize,
    /// Environment variable holding the password (never argv).
    #[arg(long, default_value = "SMTP_LOAD_PASSWORD")]
    password_env: String,
    /// Message size in bytes; 0 = auth-only sessions.
    #[arg(long, default_value_t = 0)]
    size: usize,
    #[arg(long, default_value = "load@load.example")]
    from: String,
    #[arg(long, default_value = "sink@load.example")]
    to: String,
    /// Cache SCRAM salted passwords per (password, salt, iterations) as
    /// RFC 5802 §5.1 allows, so the run measures the server, not PBKDF2 here.
    #[arg(long)]
    scram_cache: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Idle-connection mode: open this many connections (up to -c at a
    /// time: connect, greeting, EHLO), write "idle: N open ..." to stderr,
    /// hold them for -d, then check each with NOOP. For a server's memory
    /// per idle connection; no AUTH, no mail.
    #[arg(long)]
    idle: Option<usize>,
    /// Open loop: start sessions at this many a second in all (spread over
    /// the -c clients, each starting its next session on schedule, or at once
    /// when it is late) instead of each client starting the next as soon as
    /// the last ends. For latency at an equal offered load: a closed loop
    /// runs every system at its own maximum, where latency is mostly queueing.
    #[arg(long)]
    rate: Option<f64>,
    /// Runtime threads for the clients. One (the default) keeps the load
    /// tool to a single core, leaving the rest to the server it measures.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let runtime = if a.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(a.threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(run(a))
}

async fn run(a: Args) -> anyhow::Result<()> {
    if let Some(n) = a.idle {
        let report = smtp_load::idle(smtp_load::IdlePlan {
            server: a.server,
            connections: n,
            parallel: a.concurrency.max(1),
            hold: Duration::from(a.duration),
            open_timeout: Duration::from_secs(60),
        })
        .await;
        if a.json {
            println!("{}", report.json());
        } else {
            print!("{}", report.text());
        }
        return Ok(());
    }
    let mechanism = match &a.mech {
        Some(m) => Some(
            authrelay_sasl::Mechanism::from_name(m)
                .ok_or_else(|| anyhow::anyhow!("unknown mechanism {m}"))?,
        ),
        None => None,
    };
    let password = if mechanism.is_some() {
        std::env::var(&a.password_env)
            .map_err(|_| anyhow::anyhow!("set the password in ${}", a.password_env))?
    } else {
        String::new()
    };
    if a.scram_cache {
        authrelay_sasl::set_scram_cache(true);
    }
    let report = smtp_load::run(smtp_load::Plan {
        server: a.server,
        concurrency: a.concurrency.max(1),
        duration: Duration::from(a.duration),
        mechanism,
        starttls: a.starttls,
        implicit_tls: a.tls,
        user_template: a.user,
        users: a.users.max(1),
        password,
        size: a.size,
        from: a.from,
        to: a.to,
        rate: a.rate.filter(|r| *r > 0.0),
    })
    .await;
    if a.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.text());
    }
    Ok(())
}
