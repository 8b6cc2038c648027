//! `portico-watcher`: wiring only. Configuration from flags and environment, logs, then the
//! file source until SIGTERM or Ctrl-C. Exit 0 on a clean stop, 1 when the service fails.

use clap::Parser;
use portico_bus::nats::ConnectConfig;
use portico_watcher::service::{run, ServiceConfig};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Publishes Kubernetes objects from YAML files and directories onto the bus.
#[derive(Parser)]
#[command(name = "portico-watcher", version)]
struct Args {
    /// Manifest files or directories to watch.
    #[arg(required = true, env = "PORTICO_PATHS", value_delimiter = ',')]
    paths: Vec<PathBuf>,
    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "PORTICO_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    #[arg(long, env = "PORTICO_NATS_CREDS")]
    nats_creds: Option<PathBuf>,
    #[arg(long, env = "PORTICO_NATS_USER")]
    nats_user: Option<String>,
    #[arg(long, env = "PORTICO_NATS_PASSWORD", hide_env_values = true)]
    nats_password: Option<String>,
    #[arg(long, env = "PORTICO_NATS_CA")]
    nats_ca: Option<PathBuf>,
    /// Milliseconds between reads of the files (a change is live within two).
    #[arg(long, env = "PORTICO_POLL_MS", default_value_t = 250)]
    poll_ms: u64,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let args = Args::parse();
    let config = ServiceConfig {
        paths: args.paths,
        bus: ConnectConfig {
            url: args.nats_url,
            name: "portico-watcher".into(),
            credentials_file: args.nats_creds,
            user_password: args.nats_user.zip(args.nats_password),
            ca_file: args.nats_ca,
        },
        poll_every: Duration::from_millis(args.poll_ms.max(10)),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    match runtime.block_on(run(config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "watcher failed");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
