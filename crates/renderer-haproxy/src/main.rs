//! `portico-renderer-haproxy`: wiring only. Runs HAProxy (master-worker) and keeps it on
//! the newest model from the bus until SIGTERM or Ctrl-C.

use clap::Parser;
use portico_kit::cli::{instance_name, serve, AdminArgs, NatsArgs};
use portico_renderer_haproxy::service::{run, ServiceConfig};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "portico-renderer-haproxy", version)]
struct Args {
    #[command(flatten)]
    nats: NatsArgs,
    #[command(flatten)]
    admin: AdminArgs,
    /// Absolute directory for generations, the config symlink, the master socket and the log.
    #[arg(long, env = "PORTICO_WORK_DIR", default_value = "/var/lib/portico/haproxy")]
    work_dir: PathBuf,
    #[arg(long, env = "PORTICO_HAPROXY", default_value = "haproxy")]
    haproxy: String,
    #[arg(long, env = "PORTICO_HTTP_PORT", default_value_t = 8080)]
    http_port: u16,
    /// The HTTPS listener (certificates by SNI); 0 listens on no HTTPS port.
    #[arg(long, env = "PORTICO_HTTPS_PORT", default_value_t = 8443)]
    https_port: u16,
    #[arg(long, env = "PORTICO_BIND_ADDRESS", default_value = "0.0.0.0")]
    bind_address: std::net::IpAddr,
    #[arg(long, env = "PORTICO_INSTANCE")]
    instance: Option<String>,
    /// HAProxy runs in its own container sharing --work-dir, started as
    /// `haproxy -W -db -S <work-dir>/master.sock -f <work-dir>/haproxy.cfg`: wait for it
    /// and reload it through the master socket; never start or stop it.
    #[arg(long, env = "PORTICO_EXTERNAL_HAPROXY")]
    external_haproxy: bool,
}

// The system allocator (not mimalloc, as before): a change renders only its pieces
// (`ConfigBuilder`), so little is allocated per change, and glibc's trim after each apply
// (`admin::release_memory`) returns what a reload's whole rendering freed; mimalloc kept
// it (docs/PERFORMANCE.md, session 11).

fn main() -> ExitCode {
    let args = Args::parse();
    let args_admin = args.admin.clone();
    let instance = instance_name(args.instance);
    let config = ServiceConfig {
        bus: args.nats.connect_config("portico-renderer-haproxy"),
        work_dir: args.work_dir,
        haproxy: args.haproxy,
        http_port: args.http_port,
        https_port: (args.https_port != 0).then_some(args.https_port),
        bind_address: args.bind_address,
        instance,
        external_haproxy: args.external_haproxy,
    };
    serve("portico-renderer-haproxy", &args_admin, |shutdown| run(config, shutdown))
}
