//! `portico-renderer-haproxy`: wiring only. Runs HAProxy (master-worker) and keeps it on
//! the newest model from the bus until SIGTERM or Ctrl-C.

use clap::Parser;
use portico_bus::nats::ConnectConfig;
use portico_renderer_haproxy::service::{run, ServiceConfig};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "portico-renderer-haproxy", version)]
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
    /// Absolute directory for generations, the config symlink, the master socket and the log.
    #[arg(long, env = "PORTICO_WORK_DIR", default_value = "/var/lib/portico/haproxy")]
    work_dir: PathBuf,
    #[arg(long, env = "PORTICO_HAPROXY", default_value = "haproxy")]
    haproxy: String,
    #[arg(long, env = "PORTICO_HTTP_PORT", default_value_t = 8080)]
    http_port: u16,
    #[arg(long, env = "PORTICO_BIND_ADDRESS", default_value = "0.0.0.0")]
    bind_address: std::net::IpAddr,
    #[arg(long, env = "PORTICO_INSTANCE")]
    instance: Option<String>,
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
    let config = ServiceConfig {
        bus: ConnectConfig {
            url: args.nats_url,
            name: "portico-renderer-haproxy".into(),
            credentials_file: args.nats_creds,
            user_password: args.nats_user.zip(args.nats_password),
            ca_file: args.nats_ca,
        },
        work_dir: args.work_dir,
        haproxy: args.haproxy,
        http_port: args.http_port,
        bind_address: args.bind_address,
        instance,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    match runtime.block_on(run(config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "HAProxy renderer failed");
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
