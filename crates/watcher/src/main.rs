//! `portico-watcher`: wiring only. Configuration from flags and environment, logs, then the
//! file source until SIGTERM or Ctrl-C. Exit 0 on a clean stop, 1 when the service fails.

use clap::Parser;
use portico_bus::cli::{init_logs, serve, NatsArgs};
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
    #[command(flatten)]
    nats: NatsArgs,
    /// Milliseconds between reads of the files (a change is live within two).
    #[arg(long, env = "PORTICO_POLL_MS", default_value_t = 250)]
    poll_ms: u64,
}

fn main() -> ExitCode {
    init_logs();
    let args = Args::parse();
    let config = ServiceConfig {
        paths: args.paths,
        bus: args.nats.connect_config("portico-watcher"),
        poll_every: Duration::from_millis(args.poll_ms.max(10)),
    };
    serve("portico-watcher", |shutdown| run(config, shutdown))
}
