//! The Envoy renderer service: an ADS server that Envoys connect to. It follows the model
//! and the trust material on the bus, serves every connected Envoy the same snapshot, and
//! reports per node, in `portico-applied/envoy.<node>`, the generation that node has
//! acknowledged for its clusters and listeners (or the NACK's reason). Replicas serve the
//! same model independently.

use crate::ads::{Ack, Ads, Snapshot};
use crate::{resources, Delivery, Options, Trust};
use envoy_types::pb::envoy::config::{cluster::v3::Cluster, listener::v3::Listener};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use portico_bus::follow::RendererInputs;
use portico_bus::nats::{connect, ensure_buckets, Buckets, BusError};
use portico_bus::{seal, AppliedRecord, TraceContext};
use prost::Name;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

#[derive(Clone, Debug)]
pub struct ServiceConfig {
    pub bus: portico_bus::nats::ConnectConfig,
    /// Where Envoys connect (gRPC, plaintext: run it beside the Envoys or behind mTLS).
    pub listen: SocketAddr,
    pub http_port: u16,
    pub bind_address: IpAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("serving ADS on {0}: {1}")]
    Serve(SocketAddr, String),
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Reports, per node, when every subscribed type has acknowledged one version, or a NACK.
async fn report(
    buckets: Buckets,
    mut acks: mpsc::UnboundedReceiver<Ack>,
    hashes: watch::Receiver<BTreeMap<String, (u64, String)>>,
) {
    let mut by_node: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut reported: BTreeMap<String, (String, Option<String>)> = BTreeMap::new();
    while let Some(ack) = acks.recv().await {
        let acked = by_node.entry(ack.node.clone()).or_default();
        let (version, error) = match &ack.error {
            Some(e) => (ack.version.clone(), Some(format!("{} rejected: {e}", ack.type_url))),
            None => {
                acked.insert(ack.type_url.clone(), ack.version.clone());
                // Clusters and listeners are always subscribed, and a stream is processed in
                // order (secrets, clusters, endpoints, listeners, routes), so both at one
                // version mean the node runs it. Types without subscriptions are not ACKed.
                let wanted = [Cluster::type_url(), Listener::type_url()];
                let complete =
                    wanted.iter().filter(|t| ack.subscribed.contains(t)).all(|t| acked.get(t) == Some(&ack.version))
                        && ack.subscribed.iter().any(|t| wanted.contains(t));
                if !complete {
                    continue;
                }
                (ack.version.clone(), None)
            }
        };
        if reported.get(&ack.node) == Some(&(version.clone(), error.clone())) {
            continue;
        }
        let Some((generation, hash)) = hashes.borrow().get(&version).cloned() else { continue };
        if let Some(e) = &error {
            tracing::warn!(node = %ack.node, generation, error = %e, "NACK");
        } else {
            tracing::info!(node = %ack.node, generation, "applied by Envoy");
        }
        let record = AppliedRecord {
            generation,
            hash,
            error: error.clone(),
            problems: Vec::new(),
            at_unix_ms: unix_ms(),
            took_ms: 0,
        };
        let key = format!("envoy.{}", ack.node.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_"));
        let _ = buckets.applied.put(&key, seal(&record, &TraceContext::default()).into()).await;
        reported.insert(ack.node, (version, error));
    }
}

/// Run until `shutdown` completes.
pub async fn run(
    config: ServiceConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServiceError> {
    let client = connect(&config.bus).await?;
    let buckets = ensure_buckets(&async_nats::jetstream::new(client)).await?;
    let options = Options { bind_address: config.bind_address, http_port: config.http_port, admin_port: 0 };
    let (snapshot_tx, snapshot_rx) = watch::channel(Arc::new(Snapshot::new(
        "0".into(),
        &resources(&Default::default(), &Trust::new(), &options, Delivery::Ads),
    )));
    let (hash_tx, hash_rx) = watch::channel(BTreeMap::from([("0".to_owned(), (0u64, String::new()))]));
    let (ack_tx, ack_rx) = mpsc::unbounded_channel();
    tokio::spawn(report(buckets.clone(), ack_rx, hash_rx));

    let ads = Ads { snapshots: snapshot_rx, acks: ack_tx };
    let listen = config.listen;
    let (stop_grpc, grpc_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServiceServer::new(ads))
            .serve_with_shutdown(listen, async move {
                let _ = grpc_stopped.await;
            }),
    );
    tracing::info!(%listen, "Envoy renderer (ADS) running");

    let mut inputs = RendererInputs::new(&buckets).await?;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            change = inputs.next(&buckets) => { change?; }
        }
        let Some(record) = &inputs.model else { continue };
        let rendered = resources(&record.model, &inputs.trust, &options, Delivery::Ads);
        for p in &rendered.problems {
            tracing::warn!(problem = %p, "route served as 503 until its trust material arrives");
        }
        let version = format!("{}.{}", record.generation, inputs.trust_revision);
        hash_tx.send_modify(|m| {
            m.insert(version.clone(), (record.generation, record.hash.clone()));
        });
        let _ = snapshot_tx.send(Arc::new(Snapshot::new(version, &rendered)));
    }
    let _ = stop_grpc.send(());
    server
        .await
        .map_err(|e| ServiceError::Serve(listen, e.to_string()))?
        .map_err(|e| ServiceError::Serve(listen, e.to_string()))?;
    Ok(())
}
