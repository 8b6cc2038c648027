//! `portico-resolver`: wiring only. Configuration from flags and environment, logs, then the
//! service until SIGTERM or Ctrl-C. Exit 0 on a clean stop, 1 when the service fails.

use clap::Parser;
use portico_kit::cli::{instance_name, serve, AdminArgs, NatsArgs};
use portico_resolver::service::{run, ServiceConfig};
use portico_resolver::Config;
use std::process::ExitCode;
use std::time::Duration;

/// Resolves objects and verdicts from the bus into the model and statuses.
#[derive(Parser)]
#[command(name = "portico-resolver", version)]
struct Args {
    #[command(flatten)]
    nats: NatsArgs,
    #[command(flatten)]
    admin: AdminArgs,
    /// The listener port for HTTPProxies and Voyager rules without http.port.
    #[arg(long, env = "PORTICO_HTTP_PORT", default_value_t = 8080)]
    http_port: u16,
    /// The HTTPS listener: hosts with a valid certificate are served there (SNI).
    #[arg(long, env = "PORTICO_HTTPS_PORT", default_value_t = 8443)]
    https_port: u16,
    /// Where plain HTTP requests to those hosts are redirected: the port clients reach
    /// the HTTPS listener on (443 behind a Service; --https-port when they reach it
    /// directly).
    #[arg(long, env = "PORTICO_HTTPS_REDIRECT_PORT", default_value_t = 443)]
    https_redirect_port: u16,
    /// The upstream client certificate Secret, NAMESPACE/NAME.
    #[arg(long, env = "PORTICO_CLIENT_CERT", value_parser = parse_secret)]
    client_cert: Option<portico_model::SecretRef>,
    /// Contour's --root-namespaces: the namespaces where root HTTPProxies (those with a
    /// virtualhost) may be defined, comma-separated; empty means any.
    #[arg(long, env = "PORTICO_ROOT_NAMESPACES", value_delimiter = ',')]
    root_namespaces: Vec<portico_model::K8sName>,
    /// This instance's name in the lease (defaults to the host name and process id).
    #[arg(long, env = "PORTICO_INSTANCE")]
    instance: Option<String>,
    /// Milliseconds of quiet after a change before the model is rebuilt.
    #[arg(long, env = "PORTICO_HOLDOFF_MS", default_value_t = 100)]
    holdoff_ms: u64,
    /// The longest, in milliseconds, a change waits for quiet before it is published anyway.
    #[arg(long, env = "PORTICO_MAX_DELAY_MS", default_value_t = 500)]
    max_delay_ms: u64,
}

fn parse_secret(value: &str) -> Result<portico_model::SecretRef, String> {
    match value.split_once('/') {
        Some((ns, name)) => portico_model::SecretRef::new(ns, name).map_err(|e| e.to_string()),
        None => Err(format!("{value:?} is not NAMESPACE/NAME")),
    }
}

// The system allocator (not mimalloc, as before): with the model's names shared and the
// delta publish, the resolver allocates little per change, and glibc's trim after each
// publish (`admin::release_memory`) returns what the first load freed: 98 MiB at 10,000
// routes against 107-116 MiB with mimalloc, at the same latency (docs/PERFORMANCE.md).
fn main() -> ExitCode {
    let args = Args::parse();
    let args_admin = args.admin.clone();
    let instance = instance_name(args.instance);
    let mut config = ServiceConfig::new(
        args.nats.connect_config("portico-resolver"),
        Config {
            http_port: args.http_port,
            https_port: args.https_port,
            https_redirect_port: args.https_redirect_port,
            client_cert: args.client_cert,
            root_namespaces: args.root_namespaces,
        },
        instance,
    );
    config.holdoff = Duration::from_millis(args.holdoff_ms);
    config.max_delay = Duration::from_millis(args.max_delay_ms.max(args.holdoff_ms));
    serve("portico-resolver", &args_admin, |shutdown| run(config, shutdown))
}
