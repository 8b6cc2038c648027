//! `portico`: wiring only. Parse the command line, run the subcommand, map the outcome to
//! an exit code (sysexits: 65 for unreadable input documents, 66 for a missing path).

use clap::{Parser, Subcommand};
use portico_deploy::{bench, demo, parse_client_cert, status, translate, unix_now, up};
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

/// `portico up`'s flags.
#[derive(clap::Args)]
struct UpArgs {
    /// Manifest files or directories to serve instead of the demo.
    paths: Vec<PathBuf>,
    /// Configuration, JetStream's store, HAProxy's files and every part's log.
    #[arg(long, default_value = ".portico", env = "PORTICO_STATE_DIR")]
    state_dir: PathBuf,
    #[arg(long, default_value_t = 8080, env = "PORTICO_HTTP_PORT")]
    http_port: u16,
    /// The proxies' HTTPS port: hosts with a certificate (by SNI); plain HTTP to them is
    /// redirected here.
    #[arg(long, default_value_t = 8443, env = "PORTICO_HTTPS_PORT")]
    https_port: u16,
    #[arg(long, default_value_t = 4222)]
    nats_port: u16,
    #[arg(long, default_value_t = 18000)]
    ads_port: u16,
    #[arg(long, default_value_t = 9901)]
    envoy_admin_port: u16,
    /// HAProxy's address; Envoy listens on the same port at --envoy-address.
    #[arg(long, default_value = "127.0.0.1")]
    haproxy_address: std::net::IpAddr,
    #[arg(long, default_value = "127.0.0.2")]
    envoy_address: std::net::IpAddr,
    /// Where the portico-* service binaries are (default: beside this program).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The upstream client certificate, a kubernetes.io/tls Secret: NAMESPACE/NAME.
    #[arg(long, value_parser = parse_client_cert)]
    client_cert: Option<portico_model::SecretRef>,
    /// Run N nats-servers as one JetStream cluster (routes on loopback, every bucket with
    /// N replicas, the services given every server's URL), so that the stack survives the
    /// loss of any one server when N is 3 or more. The first listens on --nats-port.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    nats_cluster: u8,
}

impl UpArgs {
    fn into_options(self) -> Result<up::Options, String> {
        let state_dir =
            std::path::absolute(&self.state_dir).map_err(|e| format!("{}: {e}", self.state_dir.display()))?;
        Ok(up::Options {
            state_dir,
            manifests: self.paths,
            http_port: self.http_port,
            https_port: self.https_port,
            nats_port: self.nats_port,
            ads_port: self.ads_port,
            envoy_admin_port: self.envoy_admin_port,
            haproxy_address: self.haproxy_address,
            envoy_address: self.envoy_address,
            bin_dir: self.bin_dir.unwrap_or_else(up::sibling_bin_dir),
            client_cert: self.client_cert,
            poll: std::time::Duration::from_millis(100),
            service_env: Vec::new(),
            replicas: up::Replicas { nats: self.nats_cluster, ..Default::default() },
        })
    }
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
        /// The HTTPS listener of hosts with a certificate (SNI); plain HTTP requests to
        /// them are redirected to port 443.
        #[arg(long, default_value_t = 8443, env = "PORTICO_HTTPS_PORT")]
        https_port: u16,
        /// Envoy's admin port in the bootstrap (bound to 127.0.0.1).
        #[arg(long, default_value_t = 9901, env = "PORTICO_ENVOY_ADMIN_PORT")]
        envoy_admin_port: u16,
        /// The address the proxies listen on; 0.0.0.0 to serve other machines.
        #[arg(long, default_value = "127.0.0.1", env = "PORTICO_BIND_ADDRESS")]
        bind_address: std::net::IpAddr,
        /// The upstream client certificate, a kubernetes.io/tls Secret: NAMESPACE/NAME.
        #[arg(long, value_parser = parse_client_cert, env = "PORTICO_CLIENT_CERT")]
        client_cert: Option<portico_model::SecretRef>,
        /// Contour's --root-namespaces: where root HTTPProxies may be defined,
        /// comma-separated; empty means any namespace.
        #[arg(long, env = "PORTICO_ROOT_NAMESPACES", value_delimiter = ',')]
        root_namespaces: Vec<portico_model::K8sName>,
    },
    /// Run the whole stack locally: nats-server (JetStream, one user per service), the five
    /// services, HAProxy and Envoy. Without PATHS it runs a demo: TLS backends with
    /// certificates made at start, and manifests in STATE_DIR/manifests/demo.yaml to edit
    /// live. Prints what to curl; Ctrl-C stops everything.
    Up(UpArgs),
    /// Every object's status, and which model generation each proxy applied, from the bus
    /// of a stack that `portico up` started.
    Status {
        #[arg(long, default_value = ".portico", env = "PORTICO_STATE_DIR")]
        state_dir: PathBuf,
    },
    /// In Kubernetes (the Job in deploy/kubernetes): create the Secret with every service's
    /// NATS password, unless it exists (then nothing changes). Needs only `create` on
    /// Secrets.
    NatsCredentials {
        /// The namespace Portico runs in.
        #[arg(long, env = "PORTICO_NAMESPACE", default_value = "portico")]
        namespace: String,
        #[arg(long, env = "PORTICO_NATS_SECRET", default_value = "portico-nats-users")]
        secret: String,
        /// The Secret with ADS's mutual TLS (renderer-envoy and the Envoys mount it).
        #[arg(long, env = "PORTICO_ADS_SECRET", default_value = "portico-ads-tls")]
        ads_secret: String,
    },
    /// In Kubernetes (the Envoy pods' init container in deploy/kubernetes/envoy.yaml): make
    /// this pod's ADS client key, ask for a certificate naming `<pod>.envoy.portico` (a
    /// CertificateSigningRequest of signer portico.dev/envoy-ads, which the watcher judges
    /// and signs), and write DIR/envoy.key and DIR/envoy.crt once it is issued.
    EnvoyCertificate {
        /// Where to write envoy.key and envoy.crt (an emptyDir Envoy mounts).
        #[arg(long)]
        dir: PathBuf,
        /// This pod's name (the downward API's metadata.name).
        #[arg(long, env = "POD_NAME")]
        pod: String,
        /// How long to wait for the certificate.
        #[arg(long, default_value_t = 300)]
        wait_seconds: u64,
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
        Command::Translate {
            paths,
            out_dir,
            http_port,
            https_port,
            envoy_admin_port,
            bind_address,
            client_cert,
            root_namespaces,
        } => {
            let options = translate::Options {
                paths,
                out_dir: out_dir.clone(),
                http_port,
                https_port,
                envoy_admin_port,
                bind_address,
                client_cert,
                root_namespaces,
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
        Command::Up(args) => {
            let options = match args.into_options() {
                Ok(options) => options,
                Err(e) => {
                    eprintln!("portico: {e}");
                    return ExitCode::from(73);
                }
            };
            match run_up(options) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("portico: {e}");
                    ExitCode::from(69)
                }
            }
        }
        Command::Status { state_dir } => {
            let bus = match up::cli_bus(&state_dir) {
                Ok(bus) => bus,
                Err(e) => {
                    eprintln!(
                        "portico: {e}\nportico: is `portico up` running with --state-dir {}?",
                        state_dir.display()
                    );
                    return ExitCode::from(69);
                }
            };
            let report = up::runtime().block_on(async {
                let client = tokio::time::timeout(std::time::Duration::from_secs(5), portico_bus::nats::connect(&bus))
                    .await
                    .map_err(|_| format!("NATS at {} did not answer within 5 s", bus.url))?
                    .map_err(|e| e.to_string())?;
                let buckets = status::open(&client).await?;
                status::collect(&buckets).await
            });
            match report {
                Ok(report) => {
                    print!("{}", status::render(&report));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("portico: {e}");
                    ExitCode::from(69)
                }
            }
        }
        Command::NatsCredentials { namespace, secret, ads_secret } => {
            use portico_deploy::credentials::{ensure, ensure_ads_tls, Outcome};
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
            let nats = match runtime.block_on(ensure(&namespace, &secret)) {
                Ok(Outcome::Created) => format!("created Secret {namespace}/{secret} with a NATS password per service"),
                Ok(Outcome::Kept) => format!("Secret {namespace}/{secret} exists; kept it (delete it and restart Portico's pods to change the passwords)"),
                Err(e) => {
                    eprintln!("portico: {e}");
                    return ExitCode::FAILURE;
                }
            };
            println!("{nats}");
            match runtime.block_on(ensure_ads_tls(&namespace, &ads_secret)) {
                Ok(Outcome::Created) => {
                    println!("created Secret {namespace}/{ads_secret} with ADS's CA and certificates");
                    ExitCode::SUCCESS
                }
                Ok(Outcome::Kept) => {
                    println!("Secret {namespace}/{ads_secret} exists; kept it (delete it and restart renderer-envoy and Envoy to make new certificates)");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("portico: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::EnvoyCertificate { dir, pod, wait_seconds } => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
            let wait = std::time::Duration::from_secs(wait_seconds);
            let requested = runtime.block_on(async {
                let client = kube::Client::try_default().await.map_err(|e| e.to_string())?;
                portico_watcher::envoy_identity::request_certificate(client, &pod, &dir, wait)
                    .await
                    .map_err(|e| e.to_string())
            });
            match requested {
                Ok(()) => {
                    println!(
                        "wrote {}/envoy.crt and envoy.key for {}",
                        dir.display(),
                        portico_watcher::envoy_identity::node_of(&pod)
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("portico: {e}");
                    ExitCode::FAILURE
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

/// `portico up`: start the stack (and the demo), print what to curl, then supervise until
/// Ctrl-C or SIGTERM: a part that exits is reported and started again.
fn run_up(mut options: up::Options) -> Result<(), String> {
    let demo = if options.manifests.is_empty() {
        let demo = demo::start(options.http_port);
        let dir = options.state_dir.join("manifests");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        std::fs::write(dir.join("demo.yaml"), &demo.manifests).map_err(|e| format!("{}: {e}", dir.display()))?;
        let ca = options.state_dir.join("edge-ca.pem");
        std::fs::write(&ca, &demo.edge_ca.pem).map_err(|e| format!("{}: {e}", ca.display()))?;
        options.manifests = vec![dir];
        Some(demo)
    } else {
        None
    };
    let nats = match options.replicas.nats {
        1 => "nats-server".to_owned(),
        n => format!("{n} nats-servers as one JetStream cluster (every bucket with {n} replicas)"),
    };
    eprintln!(
        "portico: starting {nats}, the five services, HAProxy and Envoy (logs in {}/logs)",
        options.state_dir.display()
    );
    // From here on, Ctrl-C stops everything started so far, at any moment.
    let interrupted = up::interrupt_flag();
    let mut stack = up::Stack::start_interruptible(options.clone(), &interrupted).map_err(|e| e.to_string())?;
    let generation = match stack.wait_applied_while_moving(std::time::Duration::from_secs(60), &interrupted) {
        up::Applied::Generation(g) => g,
        up::Applied::Interrupted => return Err(up::UpError::Interrupted.to_string()),
        up::Applied::Stalled => {
            return Err(format!(
                "the proxies did not apply the model, and nothing moved for 60 s; see {}/logs and `portico status --state-dir {}`",
                options.state_dir.display(),
                options.state_dir.display()
            ))
        }
    };
    let bus = stack.bus(portico_deploy::nats_config::User::Cli);
    let report = up::runtime().block_on(async {
        let client = portico_bus::nats::connect(&bus).await.map_err(|e| e.to_string())?;
        status::collect(&status::open(&client).await?).await
    });
    println!("\nPortico is up: HAProxy and Envoy both applied model generation {generation}.\n");
    print!("{}", status::table_or_why(&report, &options.state_dir));
    let (h, e, port, tls) = (options.haproxy_address, options.envoy_address, options.http_port, options.https_port);
    if let Some(demo) = &demo {
        let secure = demo.secure_host;
        let ca = options.state_dir.join("edge-ca.pem").display().to_string();
        println!(
            "\nTry it (HAProxy on {h}:{port}, Envoy on {e}:{port}, one model):
  curl -H 'Host: web.example.com' http://{h}:{port}/            # 200: TLS to the backend, verified against demo/demo-ca (Contour)
  curl -H 'Host: web.example.com' http://{e}:{port}/            # the same through Envoy
  curl -H 'Host: web.example.com' http://{e}:{port}/payments    # 200: CA delegated from namespace infra
  curl -H 'Host: legacy.example.com' http://{h}:{port}/         # 200: Voyager backend-tls, verify required verifyhost
  curl -H 'Host: ingress.example.com' http://{e}:{port}/        # 200: a Kubernetes Ingress with ingress-nginx's annotations
  curl -H 'Host: gateway.example.com' http://{h}:{port}/        # 200: Gateway API HTTPRoute, BackendTLSPolicy v1 (CA in a ConfigMap)
  curl -H 'Host: web.example.com' http://{h}:{port}/broken      # 503: broken on purpose; the status above says why
  curl --cacert {ca} --resolve {secure}:{tls}:{h} https://{secure}:{tls}/   # 200: HTTPS in (SNI), verified TLS out
  curl --cacert {ca} --resolve {secure}:{tls}:{e} https://{secure}:{tls}/   # the same through Envoy
  curl -i -H 'Host: {secure}' http://{h}:{port}/         # 301 to https://{secure}:{tls}/

Edit {}/manifests/demo.yaml and both proxies follow (fix /broken: caSecret: demo-ca).",
            options.state_dir.display()
        );
    }
    println!(
        "Statuses and applied generations: portico status --state-dir {}\nLogs: {}/logs/. Ctrl-C stops everything.",
        options.state_dir.display(),
        options.state_dir.display()
    );
    stack.supervise(&interrupted);
    eprintln!("portico: stopping");
    drop(stack);
    drop(demo);
    Ok(())
}
