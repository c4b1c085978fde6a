//! The `sluice` binary: parses the command line, loads the configuration and
//! runs [`sluice::Server`] until SIGTERM or SIGINT. Also `--probe URL` (a
//! container health check without curl), `completions SHELL` and `man`.

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use sluice::config::{Config, Overrides, Secret};

// jemalloc sorts allocations into slabs by size, so the short-lived state
// of connections being set up never sits in holes between the long-lived
// state of connections that stay: after a burst of new connections, idle
// ones cost 1.4 KB each instead of 1.8 KB with glibc's malloc (bench/).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Without RUST_LOG: sluice's own lines from info up. hickory's are off:
/// sluice reports what its lookups found, once per change, while hickory
/// warns once per stray datagram, which a hostile server can make a flood.
const DEFAULT_LOGS: &str = "info,hickory_net=off,hickory_resolver=off,hickory_proto=off";

/// Read when neither `--config` nor a shorthand listener is given.
const DEFAULT_CONFIG: &str = "/etc/sluice/sluice.toml";
/// How long `--probe` waits to connect, and then for the answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Layer-4 TCP/UDP load balancer with backends from DNS SRV records (Consul
/// DNS) or Consul's HTTP API.
#[derive(Debug, Parser)]
#[command(
    version,
    about,
    after_help = "Without --config and LISTENER, /etc/sluice/sluice.toml is read."
)]
struct Cli {
    /// TOML configuration file.
    #[arg(
        short,
        long,
        value_name = "FILE",
        env = "SLUICE_CONFIG",
        hide_env_values = true
    )]
    config: Option<PathBuf>,
    /// DNS servers for SRV lookups, ip|host[:port][,...] (port 53 if left
    /// out), tried in order; overrides `dns`. Default: /etc/resolv.conf's.
    #[arg(long, value_name = "ADDR", env = "SLUICE_DNS", hide_env_values = true)]
    dns: Option<String>,
    /// Serve /metrics, /status, /, /healthz, /ready and the API on ADDR;
    /// overrides `metrics`.
    #[arg(long, value_name = "ADDR", env = "SLUICE_METRICS", hide_env_values = true)]
    metrics: Option<String>,
    /// Validate the configuration, print what is wrong, exit 0 or 1.
    #[arg(long)]
    check: bool,
    /// GET URL and exit 0 if the answer is 2xx, else 1: a health check for
    /// images without curl, e.g. --probe http://127.0.0.1:9100/ready
    #[arg(long, value_name = "URL", exclusive = true)]
    probe: Option<String>,
    /// Log as human-readable text or as one JSON object per line.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Shorthand listeners: [ADDR:]PORT[/udp]:SERVICE, e.g. 2003:graphite.
    #[arg(value_name = "LISTENER")]
    listeners: Vec<String>,
    #[command(subcommand)]
    command: Option<Tool>,
}

#[derive(Debug, Subcommand)]
enum Tool {
    /// Print a completion script for SHELL, e.g. `sluice completions bash
    /// > /etc/bash_completion.d/sluice`.
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff), e.g. `sluice man > sluice.1`.
    Man,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    match &cli.command {
        Some(Tool::Completions { shell }) => {
            clap_complete::generate(*shell, &mut Cli::command(), "sluice", &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        Some(Tool::Man) => {
            let page = clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout());
            return if page.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
        None => {}
    }
    if let Some(url) = &cli.probe {
        return match probe(url) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sluice: probe {url}: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if cli.config.is_none() && cli.listeners.is_empty() {
        if !Path::new(DEFAULT_CONFIG).exists() {
            eprintln!(
                "sluice: nothing to serve: pass --config FILE (or set SLUICE_CONFIG), or listeners such as\n  \
                 sluice --dns 127.0.0.1:8600 6379:redis\n\
                 Without either, sluice reads {DEFAULT_CONFIG}, which does not exist. See sluice --help."
            );
            return ExitCode::from(2);
        }
        cli.config = Some(DEFAULT_CONFIG.into());
    }
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
        // Signals are handled beside the server, in this task: they never end,
        // so the server's end is the end.
        let stop = stop_on_signal(term, int, shutdown.clone());
        let reload = reload_on_sighup(hangups, server.control());
        let signals = async { tokio::join!(stop, reload) };
        tokio::select! {
            () = server.run(shutdown.clone()) => {}
            _ = signals => {}
        }
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

/// GET `url` (http://host[:port]/path) once; `Ok` on a 2xx answer.
fn probe(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// URLs (the admin endpoint)")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let addr = authority
        .to_socket_addrs()
        .or_else(|_| (authority, 80).to_socket_addrs())
        .map_err(|e| format!("cannot resolve {authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority} has no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(PROBE_TIMEOUT))
        .map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut status_line = String::new();
    BufReader::new(stream)
        .read_line(&mut status_line)
        .map_err(|e| e.to_string())?;
    match status_line.split_whitespace().nth(1) {
        Some(code) if code.starts_with('2') && code.len() == 3 => Ok(()),
        Some(_) => Err(status_line.trim().to_string()),
        None => Err(format!("not an HTTP answer: {:?}", status_line.trim())),
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
