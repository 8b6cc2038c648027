//! `portico-secrets`: wiring only. Configuration from flags and environment, logs, then the
//! service until SIGTERM or Ctrl-C. Exit 0 on a clean stop, 1 when the service fails.

use clap::Parser;
use portico_kit::cli::{serve, AdminArgs, NatsArgs};
use portico_secrets::service::{run, ServiceConfig};
use std::process::ExitCode;
use std::time::Duration;

/// Validates the CA bundles and client certificates of Secrets on the bus.
#[derive(Parser)]
#[command(name = "portico-secrets", version)]
struct Args {
    #[command(flatten)]
    nats: NatsArgs,
    #[command(flatten)]
    admin: AdminArgs,
    /// Seconds between re-validations of every known Secret.
    #[arg(long, env = "PORTICO_REVALIDATE_SECONDS", default_value_t = 3600)]
    revalidate_seconds: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let args_admin = args.admin.clone();
    let config = ServiceConfig {
        bus: args.nats.connect_config("portico-secrets"),
        revalidate_every: Duration::from_secs(args.revalidate_seconds.max(1)),
    };
    serve("portico-secrets", &args_admin, |shutdown| run(config, shutdown))
}
