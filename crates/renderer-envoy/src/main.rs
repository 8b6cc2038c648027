//! `portico-renderer-envoy`: wiring only. Serves ADS to Envoys from the model on the bus
//! until SIGTERM or Ctrl-C.

use clap::Parser;
use portico_bus::cli::{serve, AdminArgs, NatsArgs};
use portico_renderer_envoy::service::{run, ServiceConfig};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "portico-renderer-envoy", version)]
struct Args {
    #[command(flatten)]
    nats: NatsArgs,
    #[command(flatten)]
    admin: AdminArgs,
    /// Where Envoys connect for ADS (gRPC).
    #[arg(long, env = "PORTICO_ADS_LISTEN", default_value = "127.0.0.1:18000")]
    listen: std::net::SocketAddr,
    #[arg(long, env = "PORTICO_HTTP_PORT", default_value_t = 8080)]
    http_port: u16,
    /// The address the Envoys' listeners bind to.
    #[arg(long, env = "PORTICO_BIND_ADDRESS", default_value = "0.0.0.0")]
    bind_address: std::net::IpAddr,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let args_admin = args.admin.clone();
    let config = ServiceConfig {
        bus: args.nats.connect_config("portico-renderer-envoy"),
        listen: args.listen,
        http_port: args.http_port,
        bind_address: args.bind_address,
    };
    serve("portico-renderer-envoy", &args_admin, |shutdown| run(config, shutdown))
}
