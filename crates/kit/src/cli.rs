//! What every service binary shares: the NATS flags, logs and traces, the runtime, and stopping on
//! SIGTERM or Ctrl-C. A `main.rs` flattens `NatsArgs` into its own flags and calls `serve`.

use portico_bus::nats::ConnectConfig;
use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

/// How to reach NATS, from flags or the environment.
#[derive(clap::Args, Clone, Debug)]
pub struct NatsArgs {
    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "PORTICO_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// A NATS .creds file.
    #[arg(long, env = "PORTICO_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// NATS user (with --nats-password, from the environment preferably).
    #[arg(long, env = "PORTICO_NATS_USER")]
    pub nats_user: Option<String>,
    #[arg(long, env = "PORTICO_NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,
    /// CA bundle to verify the NATS server's TLS certificate with.
    #[arg(long, env = "PORTICO_NATS_CA")]
    pub nats_ca: Option<PathBuf>,
    /// How many servers of a NATS cluster keep each bucket this service creates; an
    /// existing bucket of this service's with another count is changed to it.
    #[arg(long, env = "PORTICO_NATS_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub nats_replicas: u8,
}

impl NatsArgs {
    /// The connection settings, with `name` as the client name NATS shows.
    pub fn connect_config(self, name: &str) -> ConnectConfig {
        ConnectConfig {
            url: self.nats_url,
            name: name.to_owned(),
            credentials_file: self.nats_creds,
            user_password: self.nats_user.zip(self.nats_password),
            ca_file: self.nats_ca,
            replicas: usize::from(self.nats_replicas),
        }
    }
}

/// The admin port (`/healthz`, `/readyz`, `/metrics`), from flags or the environment.
#[derive(clap::Args, Clone, Debug)]
pub struct AdminArgs {
    /// Where to serve /healthz, /readyz and /metrics (e.g. 0.0.0.0:9090); off when unset.
    #[arg(long, env = "PORTICO_ADMIN_LISTEN")]
    pub admin_listen: Option<std::net::SocketAddr>,
}

/// `--instance`, or the host name and process id.
pub fn instance_name(given: Option<String>) -> String {
    given.unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    })
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Run a service until it stops: exit 0 on a clean stop, 1 when it fails (logged). Sets
/// up logs and traces first (`crate::telemetry`) and exports the last spans at the end.
pub fn serve<F, E>(
    name: &str,
    admin: &AdminArgs,
    service: impl FnOnce(std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> F,
) -> ExitCode
where
    F: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    let telemetry = {
        let _in_runtime = runtime.enter();
        crate::telemetry::init(name)
    };
    let code = (|| {
        if let Some(addr) = admin.admin_listen {
            if let Err(e) = runtime.block_on(crate::admin::serve(addr)) {
                tracing::error!(%addr, error = %e, "{name}: cannot serve the admin port");
                return ExitCode::from(69);
            }
        }
        match runtime.block_on(service(Box::pin(shutdown_signal()))) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "{name} failed");
                ExitCode::FAILURE
            }
        }
    })();
    // The exporters need the runtime; the flush blocks, so not on an async worker.
    let _ = runtime.block_on(async move { tokio::task::spawn_blocking(move || telemetry.shutdown()).await });
    code
}
