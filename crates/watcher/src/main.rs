//! `portico-watcher`: wiring only. Configuration from flags and environment, logs, then the
//! file source or the Kubernetes source until SIGTERM or Ctrl-C. Exit 0 on a clean stop, 1
//! when the service fails, 64 for a bad command line.

use clap::Parser;
use portico_kit::cli::{instance_name, serve, AdminArgs, NatsArgs};
use portico_watcher::kubernetes::KubeConfig;
use portico_watcher::service::{run, ServiceConfig, ServiceError};
use portico_watcher::status::StatusConfig;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Publishes Kubernetes objects onto the bus: from YAML files and directories, or, with
/// --kubernetes, from the Kubernetes API (in-cluster configuration or $KUBECONFIG).
#[derive(Parser)]
#[command(name = "portico-watcher", version)]
struct Args {
    /// Manifest files or directories to watch (the file source).
    #[arg(
        env = "PORTICO_PATHS",
        value_delimiter = ',',
        required_unless_present = "kubernetes",
        conflicts_with = "kubernetes"
    )]
    paths: Vec<PathBuf>,
    /// Watch the Kubernetes API instead of files.
    #[arg(long, env = "PORTICO_KUBERNETES")]
    kubernetes: bool,
    /// With --kubernetes: the namespaces to watch, comma-separated (default: all).
    #[arg(long, env = "PORTICO_NAMESPACES", value_delimiter = ',', requires = "kubernetes")]
    namespaces: Vec<String>,
    /// With --kubernetes: watch the Gateway API kinds (GatewayClass, Gateway, HTTPRoute,
    /// ReferenceGrant, BackendTLSPolicy v1) and ConfigMaps: `auto` when the API server
    /// serves BackendTLSPolicy v1 (its CRDs are installed), `on` (the watcher is not ready
    /// until they are), or `off`.
    #[arg(long, env = "PORTICO_GATEWAY_API", default_value = "auto")]
    gateway_api: portico_watcher::kubernetes::GatewayApiMode,
    /// With --kubernetes: do not write statuses back to HTTPProxies and Voyager Ingresses.
    #[arg(long, env = "PORTICO_NO_STATUS", requires = "kubernetes")]
    no_status: bool,
    /// With --kubernetes: the address (IP or host name) clients reach the proxies at, set
    /// in the status.loadBalancer of the Kubernetes Ingresses Portico serves.
    #[arg(long, env = "PORTICO_PUBLISH_ADDRESS", requires = "kubernetes")]
    publish_address: Option<String>,
    /// With --kubernetes: the namespace of the status writers' Lease (one replica writes).
    #[arg(long, env = "PORTICO_LEASE_NAMESPACE", default_value = "portico")]
    lease_namespace: String,
    /// With --kubernetes: sign the Envoy pods' ADS client certificates (signer
    /// portico.dev/envoy-ads) with the CA in this Secret (`ca.crt`, `ca.key`) of the Lease's
    /// namespace, for pods of the service account --envoy-service-account there.
    #[arg(long, env = "PORTICO_ENVOY_SIGNER_CA_SECRET", requires = "kubernetes")]
    envoy_signer_ca_secret: Option<String>,
    #[arg(long, env = "PORTICO_ENVOY_SERVICE_ACCOUNT", default_value = "portico-envoy")]
    envoy_service_account: String,
    /// This replica's name in the Lease (default: host name and process id).
    #[arg(long, env = "PORTICO_INSTANCE")]
    instance: Option<String>,
    #[command(flatten)]
    nats: NatsArgs,
    #[command(flatten)]
    admin: AdminArgs,
    /// The debounce, in milliseconds: after the file system reports a change, the files
    /// are read at once, and again this much later; the change is published once two
    /// reads agree (so about this long after it was written).
    #[arg(long, env = "PORTICO_POLL_MS", default_value_t = 100)]
    poll_ms: u64,
    /// Milliseconds between safety rescans of the files when no change was reported (a
    /// missed notification, a file system without them).
    #[arg(long, env = "PORTICO_RESCAN_MS", default_value_t = 30_000)]
    rescan_ms: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let args_admin = args.admin.clone();
    let bus = args.nats.connect_config("portico-watcher");
    if args.kubernetes {
        let config = KubeConfig {
            bus,
            namespaces: args.namespaces,
            gateway_api: args.gateway_api,
            holdoff: Duration::from_millis(100),
            max_delay: Duration::from_millis(500),
            envoy_signer: args.envoy_signer_ca_secret.map(|ca_secret| portico_watcher::envoy_identity::SignerConfig {
                namespace: args.lease_namespace.clone(),
                service_account: args.envoy_service_account,
                ca_secret,
                validity: Duration::from_secs(365 * 86_400),
                every: Duration::from_secs(2),
            }),
            status: (!args.no_status).then(|| StatusConfig {
                lease_namespace: args.lease_namespace,
                lease_name: "portico-watcher".into(),
                identity: instance_name(args.instance),
                lease_duration: Duration::from_secs(15),
                max_per_second: 20,
                publish_address: args.publish_address,
            }),
        };
        serve("portico-watcher", &args_admin, |shutdown| async move {
            let client = kube::Client::try_default().await.map_err(|e| ServiceError::Kubernetes(e.to_string()))?;
            portico_watcher::kubernetes::run(config, client, shutdown).await
        })
    } else {
        let config = ServiceConfig {
            paths: args.paths,
            bus,
            poll_every: Duration::from_millis(args.poll_ms.max(10)),
            rescan_every: Duration::from_millis(args.rescan_ms.max(args.poll_ms).max(100)),
        };
        serve("portico-watcher", &args_admin, |shutdown| run(config, shutdown))
    }
}
