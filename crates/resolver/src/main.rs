//! `portico-resolver`: wiring only. Configuration from flags and environment, logs, then the
//! service until SIGTERM or Ctrl-C. Exit 0 on a clean stop, 1 when the service fails.

use clap::Parser;
use portico_bus::nats::ConnectConfig;
use portico_resolver::service::{run, ServiceConfig};
use portico_resolver::Config;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Resolves objects and verdicts from the bus into the model and statuses.
#[derive(Parser)]
#[command(name = "portico-resolver", version)]
struct Args {
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
    /// The listener port for HTTPProxies and Voyager rules without http.port.
    #[arg(long, env = "PORTICO_HTTP_PORT", default_value_t = 8080)]
    http_port: u16,
    /// The upstream client certificate Secret, NAMESPACE/NAME.
    #[arg(long, env = "PORTICO_CLIENT_CERT", value_parser = parse_secret)]
    client_cert: Option<portico_model::SecretRef>,
    /// This instance's name in the lease (defaults to the host name and process id).
    #[arg(long, env = "PORTICO_INSTANCE")]
    instance: Option<String>,
    /// Quiet time before a rebuild, and the longest a change may wait, in milliseconds.
    #[arg(long, env = "PORTICO_HOLDOFF_MS", default_value_t = 100)]
    holdoff_ms: u64,
    #[arg(long, env = "PORTICO_MAX_DELAY_MS", default_value_t = 500)]
    max_delay_ms: u64,
}

fn parse_secret(value: &str) -> Result<portico_model::SecretRef, String> {
    match value.split_once('/') {
        Some((ns, name)) => portico_model::SecretRef::new(ns, name).map_err(|e| e.to_string()),
        None => Err(format!("{value:?} is not NAMESPACE/NAME")),
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let args = Args::parse();
    let instance = args.instance.unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let mut config = ServiceConfig::new(
        ConnectConfig {
            url: args.nats_url,
            name: "portico-resolver".into(),
            credentials_file: args.nats_creds,
            user_password: args.nats_user.zip(args.nats_password),
            ca_file: args.nats_ca,
        },
        Config { http_port: args.http_port, client_cert: args.client_cert },
        instance,
    );
    config.holdoff = Duration::from_millis(args.holdoff_ms);
    config.max_delay = Duration::from_millis(args.max_delay_ms.max(args.holdoff_ms));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    match runtime.block_on(run(config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "resolver failed");
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
