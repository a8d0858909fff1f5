//! `west`: the only binary. Parses flags, environment and the optional TOML file (in that
//! order of precedence), sets up logging, binds sockets, and hands over to the library
//! crates. Exits non-zero with a one-line reason on any startup failure.

/// Prints a line on stdout like `println!`, but never panics: a full disk or a closed pipe
/// must not stop a site (it keeps serving; the line is lost).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod bench;
mod config;
mod hub_cmd;
mod perms;
mod quickstart;
mod site_cmd;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "west",
    version,
    about = "West Connectivity Platform Remote Sync"
)]
struct Cli {
    /// Log format: human-readable text or one JSON object per line.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "WEST_LOG_FORMAT"
    )]
    log_format: LogFormat,
    /// Log filter in tracing's env-filter syntax, e.g. `info,west_site=debug`.
    #[arg(long, global = true, default_value = "info", env = "WEST_LOG")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a hub and two paired sites on this machine with a demo, for trying it out.
    Quickstart(quickstart::QuickstartArgs),
    /// Run one deployment: web UI, REST API, device API and sync engine.
    Site(site_cmd::SiteArgs),
    /// Run the Connectivity Hub, or manage its site registry.
    Hub(hub_cmd::HubArgs),
    /// Measure throughput and latency against real processes on loopback.
    Bench(bench::BenchArgs),
}

fn main() {
    perms::private_umask();
    let cli = Cli::parse();
    init_logging(cli.log_format, &cli.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => fail(&anyhow::anyhow!(e).context("starting the async runtime")),
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Quickstart(args) => quickstart::run(args).await,
            Command::Site(args) => site_cmd::run(args).await,
            Command::Hub(args) => hub_cmd::run(args).await,
            Command::Bench(args) => bench::run(args).await,
        }
    });
    if let Err(e) = result {
        fail(&e);
    }
}

fn fail(e: &anyhow::Error) -> ! {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "west: {e:#}");
    std::process::exit(1);
}

fn init_logging(format: LogFormat, filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    // A log line that cannot be written (a full disk, a closed pipe) is dropped. The
    // builder's default would report it with `eprintln!`, which panics when stderr fails:
    // a site must never stop over its log.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Completes on Ctrl-C or SIGTERM.
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
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}
