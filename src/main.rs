//! The `sluice` binary: parses the command line, loads the configuration and
//! runs [`sluice::Server`] until SIGTERM or SIGINT.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use sluice::config::{Config, Overrides, Secret};

/// Without RUST_LOG: sluice's own lines from info up. hickory's are off:
/// sluice reports what its lookups found, once per change, while hickory
/// warns once per stray datagram, which a hostile server can make a flood.
const DEFAULT_LOGS: &str = "info,hickory_net=off,hickory_resolver=off,hickory_proto=off";

/// Layer-4 TCP load balancer with backends from DNS SRV records (Consul DNS).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// DNS servers for SRV lookups, ip|host[:port][,...] (port 53 if left
    /// out), tried in order; overrides `dns`. Default: /etc/resolv.conf's.
    #[arg(long, value_name = "ADDR")]
    dns: Option<String>,
    /// Serve /metrics, /status, / and /healthz on ADDR; overrides `metrics`.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    /// Validate the configuration, print what is wrong, exit 0 or 1.
    #[arg(long)]
    check: bool,
    /// Log as human-readable text or as one JSON object per line.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Shorthand listeners: [ADDR:]PORT[/udp]:SERVICE, e.g. 2003:graphite.
    #[arg(value_name = "LISTENER")]
    listeners: Vec<String>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before the configuration: default connection caps derive from it.
    let descriptors = sluice::limits::raise_descriptor_limit();
    let overrides = Overrides {
        dns: cli.dns,
        metrics: cli.metrics,
        listeners: cli.listeners,
        // As Consul's own tools read them, when the file does not say.
        consul_env: std::env::var("CONSUL_HTTP_ADDR").ok(),
        consul_token_env: std::env::var("CONSUL_HTTP_TOKEN").ok().map(Secret),
        api_token_env: std::env::var("SLUICE_API_TOKEN").ok().map(Secret),
    };
    let config = match Config::load(cli.config.as_deref(), &overrides) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("sluice: invalid configuration:\n{e}");
            return ExitCode::FAILURE;
        }
    };
    if cli.check {
        println!("configuration OK: {} listener(s)", config.listeners.len());
        return ExitCode::SUCCESS;
    }
    let logs = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOGS)))
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().init(),
    }
    match descriptors {
        Ok((before, after)) if after > before => {
            tracing::info!(before, after, "raised the open-file limit to its hard limit")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    match serve(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        // Handlers before anything listens: a signal sent once sluice looks
        // ready must never meet the default action, which ends the process.
        let install = |kind| signal(kind).context("cannot install signal handlers");
        let term = install(SignalKind::terminate())?;
        let int = install(SignalKind::interrupt())?;
        let hangups = install(SignalKind::hangup())?;
        let server = sluice::Server::bind(config).await?;
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(term, int, shutdown.clone()));
        tokio::spawn(reload_on_sighup(hangups, server.control()));
        server.run(shutdown).await;
        Ok(())
    })
}

/// On each SIGHUP, has the server read the configuration file again and
/// apply it with the API's listeners as they are; a file with problems
/// changes nothing, and the server logs the problems with file and line.
async fn reload_on_sighup(mut hangups: Signal, control: sluice::Control) {
    while hangups.recv().await.is_some() {
        tracing::info!("SIGHUP received, reloading the configuration");
        let _ = control.reload_file().await;
    }
}

/// Cancels `shutdown` on the first SIGTERM or SIGINT.
async fn stop_on_signal(mut term: Signal, mut int: Signal, shutdown: CancellationToken) {
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    shutdown.cancel();
}
