//! `portico-renderer-envoy`: wiring only. Serves ADS to Envoys from the model on the bus
//! until SIGTERM or Ctrl-C.

use clap::Parser;
use portico_kit::cli::{serve, AdminArgs, NatsArgs};
use portico_renderer_envoy::service::{run, AdsTls, ServiceConfig};
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
    /// ADS over mutual TLS: this server's certificate (PEM), with --tls-key and --client-ca.
    #[arg(long, env = "PORTICO_ADS_TLS_CERT", requires_all = ["tls_key", "client_ca"])]
    tls_cert: Option<std::path::PathBuf>,
    #[arg(long, env = "PORTICO_ADS_TLS_KEY", requires_all = ["tls_cert", "client_ca"])]
    tls_key: Option<std::path::PathBuf>,
    /// The CA of the Envoys' client certificates; each must name its node id as a DNS name.
    #[arg(long, env = "PORTICO_ADS_CLIENT_CA", requires_all = ["tls_cert", "tls_key"])]
    client_ca: Option<std::path::PathBuf>,
}

fn read(path: &std::path::Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let args_admin = args.admin.clone();
    let tls = match (&args.tls_cert, &args.tls_key, &args.client_ca) {
        (Some(cert), Some(key), Some(ca)) => match (read(cert), read(key), read(ca)) {
            (Ok(cert_pem), Ok(key_pem), Ok(client_ca_pem)) => Some(AdsTls { cert_pem, key_pem, client_ca_pem }),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                eprintln!("portico-renderer-envoy: cannot read the ADS TLS files: {e}");
                return ExitCode::from(66);
            }
        },
        _ => None,
    };
    let config = ServiceConfig {
        bus: args.nats.connect_config("portico-renderer-envoy"),
        listen: args.listen,
        tls,
        http_port: args.http_port,
        bind_address: args.bind_address,
    };
    serve("portico-renderer-envoy", &args_admin, |shutdown| run(config, shutdown))
}
