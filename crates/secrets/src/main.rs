//! `portico-secrets`: wiring only. Configuration from flags and environment, logs, then the
//! service until SIGTERM or Ctrl-C. Exit 0 on a clean stop, 1 when the service fails.

use clap::Parser;
use portico_bus::nats::ConnectConfig;
use portico_secrets::service::{run, ServiceConfig};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Validates the CA bundles and client certificates of Secrets on the bus.
#[derive(Parser)]
#[command(name = "portico-secrets", version)]
struct Args {
    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "PORTICO_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// A NATS .creds file.
    #[arg(long, env = "PORTICO_NATS_CREDS")]
    nats_creds: Option<PathBuf>,
    /// NATS user (with --nats-password, from the environment preferably).
    #[arg(long, env = "PORTICO_NATS_USER")]
    nats_user: Option<String>,
    #[arg(long, env = "PORTICO_NATS_PASSWORD", hide_env_values = true)]
    nats_password: Option<String>,
    /// CA bundle to verify the NATS server's TLS certificate with.
    #[arg(long, env = "PORTICO_NATS_CA")]
    nats_ca: Option<PathBuf>,
    /// Seconds between re-validations of every known Secret.
    #[arg(long, env = "PORTICO_REVALIDATE_SECONDS", default_value_t = 3600)]
    revalidate_seconds: u64,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let args = Args::parse();
    let config = ServiceConfig {
        bus: ConnectConfig {
            url: args.nats_url,
            name: "portico-secrets".into(),
            credentials_file: args.nats_creds,
            user_password: args.nats_user.zip(args.nats_password),
            ca_file: args.nats_ca,
        },
        revalidate_every: Duration::from_secs(args.revalidate_seconds.max(1)),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    match runtime.block_on(run(config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "secrets service failed");
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
