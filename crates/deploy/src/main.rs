//! `portico`: wiring only. Parse the command line, run the subcommand, map the outcome to
//! an exit code (sysexits: 65 for unreadable input documents, 66 for a missing path).

use clap::{Parser, Subcommand};
use portico_deploy::{bench, parse_client_cert, translate, unix_now};
use std::path::PathBuf;
use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "portico",
    version,
    about = "Upstream TLS for Kubernetes ingress: Contour and Voyager dialects, HAProxy and Envoy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Read manifests (files or directories, multi-document YAML), validate secrets, resolve,
    /// and write DIR/status.json, DIR/model.json, DIR/haproxy/ (haproxy.cfg and the files it
    /// references) and DIR/envoy/envoy.yaml (run it with `envoy -c`). Exits 0 when objects are
    /// merely invalid (their status says so), 65 when a document cannot be read, 66 when a
    /// path does not exist.
    Translate {
        /// Manifest files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Where to write the outputs.
        #[arg(long, env = "PORTICO_OUT_DIR")]
        out_dir: PathBuf,
        /// The listener port for HTTPProxies and Voyager rules without http.port.
        #[arg(long, default_value_t = 8080, env = "PORTICO_HTTP_PORT")]
        http_port: u16,
        /// Envoy's admin port in the bootstrap (bound to 127.0.0.1).
        #[arg(long, default_value_t = 9901, env = "PORTICO_ENVOY_ADMIN_PORT")]
        envoy_admin_port: u16,
        /// The address the proxies listen on; 0.0.0.0 to serve other machines.
        #[arg(long, default_value = "127.0.0.1", env = "PORTICO_BIND_ADDRESS")]
        bind_address: std::net::IpAddr,
        /// The upstream client certificate, a kubernetes.io/tls Secret: NAMESPACE/NAME.
        #[arg(long, value_parser = parse_client_cert, env = "PORTICO_CLIENT_CERT")]
        client_cert: Option<portico_model::SecretRef>,
    },
    /// Time secrets validation and resolution on a generated cluster (DESIGN.md targets).
    /// Build with --release for meaningful figures.
    Bench {
        #[arg(long, default_value_t = 10_000)]
        proxies: usize,
        #[arg(long, default_value_t = 10_000)]
        services: usize,
        #[arg(long, default_value_t = 1_000)]
        ca_secrets: usize,
        #[arg(long, default_value_t = 100)]
        namespaces: usize,
        /// Repetitions of each timed step (the median is reported).
        #[arg(long, default_value_t = 7)]
        runs: usize,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Translate { paths, out_dir, http_port, envoy_admin_port, bind_address, client_cert } => {
            let options = translate::Options {
                paths,
                out_dir: out_dir.clone(),
                http_port,
                envoy_admin_port,
                bind_address,
                client_cert,
                now: unix_now(),
            };
            match translate::run(&options) {
                Ok(outcome) => {
                    print!("{}", translate::report(&outcome, &out_dir));
                    if outcome.problems.is_empty() {
                        ExitCode::SUCCESS
                    } else {
                        eprintln!(
                            "portico: {} document(s) could not be read; see the errors above",
                            outcome.problems.len()
                        );
                        ExitCode::from(65)
                    }
                }
                Err(e @ translate::TranslateError::InputUnreadable(_)) => {
                    eprintln!("portico: {e}");
                    ExitCode::from(66)
                }
                Err(e) => {
                    eprintln!("portico: {e}");
                    ExitCode::from(74)
                }
            }
        }
        Command::Bench { proxies, services, ca_secrets, namespaces, runs } => {
            let options = bench::Options { proxies, services, ca_secrets, namespaces: namespaces.max(1), runs };
            print!("{}", bench::run(&options, unix_now()).render());
            ExitCode::SUCCESS
        }
    }
}
