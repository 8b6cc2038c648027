//! The Envoy renderer service: an ADS server that Envoys connect to. It follows the model
//! and the trust material on the bus, serves every connected Envoy the same snapshot, and
//! reports per node, in `portico-applied/envoy.<node>`, the generation that node has
//! acknowledged for its clusters and listeners (or the NACK's reason). Replicas serve the
//! same model independently.

use crate::ads::{Ads, NodeEvent, Snapshot, NODE_EVENTS};
use crate::incremental::SnapshotBuilder;
use crate::Options;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use portico_bus::nats::{Buckets, BusError};
use portico_bus::{seal, AppliedRecord, TraceContext, Version};
use portico_kit::renderer_inputs::RendererInputs;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

#[derive(Clone, Debug)]
pub struct ServiceConfig {
    pub bus: portico_bus::nats::ConnectConfig,
    /// Where Envoys connect (gRPC).
    pub listen: SocketAddr,
    /// Mutual TLS on the ADS port: without it, anyone who reaches the port gets every
    /// client key and CA bundle (SDS). `portico up` always sets it.
    pub tls: Option<AdsTls>,
    pub http_port: u16,
    pub bind_address: IpAddr,
}

/// The ADS server's certificate and key, and the CA that issues the Envoys' certificates
/// (PEM). An Envoy is served only with a certificate of that CA naming its node id as a
/// DNS subject alternative name.
#[derive(Clone)]
pub struct AdsTls {
    pub cert_pem: String,
    pub key_pem: String,
    pub client_ca_pem: String,
}

impl std::fmt::Debug for AdsTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdsTls { .. }") // never the key
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("serving ADS on {0}: {1}")]
    Serve(SocketAddr, String),
}

/// Reports, per node, the snapshot it runs (see `ads::Tracker`) or a NACK.
async fn report(buckets: Buckets, mut events: mpsc::Receiver<NodeEvent>, hashes: watch::Receiver<Versions>) {
    // Per connected node only: a node's entry goes when its stream ends.
    let mut reported: BTreeMap<String, (String, Option<String>)> = BTreeMap::new();
    // Records whose put failed (NATS restarting, say): put again every second until they
    // are on the bus, unless a newer record for the node replaces them first.
    let mut unreported: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut retry = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        let event = tokio::select! {
            event = events.recv() => match event {
                Some(event) => event,
                None => return,
            },
            _ = retry.tick(), if !unreported.is_empty() => {
                let keys: Vec<String> = unreported.keys().cloned().collect();
                for key in keys {
                    if buckets.applied.put(&key, unreported[&key].clone().into()).await.is_ok() {
                        unreported.remove(&key);
                    }
                }
                continue;
            }
        };
        let (node, version, error) = match event {
            NodeEvent::Applied { node, version } => (node, version, None),
            NodeEvent::Rejected { node, version, type_url, error } => {
                (node, version, Some(format!("{type_url} rejected: {error}")))
            }
            NodeEvent::Gone { node } => {
                portico_kit::admin::remove_with("portico_renderer_envoy_published_to_applied_seconds", "node", &node);
                portico_kit::admin::remove_with("portico_renderer_envoy_change_to_applied_seconds", "node", &node);
                reported.remove(&node);
                continue;
            }
        };
        if reported.get(&node) == Some(&(version.clone(), error.clone())) {
            continue;
        }
        let Some(Served { model: model_version, hash, trace: served, changed_at_ms, published_at_ms }) =
            hashes.borrow().get(&version).cloned()
        else {
            continue;
        };
        let generation = model_version.generation;
        // Envoy's answer is the last step of the change's trace.
        let span = tracing::info_span!(parent: None, "envoy.ack", node = %node, generation, nack = error.is_some());
        portico_kit::telemetry::continue_trace(&span, &served);
        let trace = portico_kit::telemetry::outgoing(&span, &served);
        let _entered = span.enter();
        if let Some(e) = &error {
            portico_kit::admin::counter("portico_renderer_envoy_nacks_total", "Configurations an Envoy rejected.", 1.0);
            tracing::warn!(node = %node, generation, error = %e, "NACK");
        } else {
            tracing::info!(node = %node, generation, "applied by Envoy");
            // Per Envoy (the node id), whose series goes when its stream ends.
            portico_kit::admin::histogram_since(
                "portico_renderer_envoy_published_to_applied_seconds",
                "From a model being published to an Envoy acknowledging every resource of it.",
                &[("node", &node)],
                published_at_ms,
            );
            portico_kit::admin::histogram_since(
                "portico_renderer_envoy_change_to_applied_seconds",
                "End to end: from a change reaching the bus to an Envoy acknowledging it.",
                &[("node", &node)],
                changed_at_ms,
            );
        }
        let record = AppliedRecord {
            epoch: model_version.epoch,
            generation,
            hash,
            error: error.clone(),
            problems: Vec::new(),
            at_unix_ms: portico_bus::unix_ms(),
            took_ms: 0,
        };
        let key = format!("envoy.{}", node.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_"));
        drop(_entered); // not across the await: the task may move between threads
        let sealed = seal(&record, &trace);
        match buckets.applied.put(&key, sealed.clone().into()).instrument(span).await {
            Ok(_) => {
                unreported.remove(&key);
            }
            Err(e) => {
                tracing::warn!(key, error = %e, "the applied record could not be written; retrying");
                portico_kit::admin::counter(
                    "portico_renderer_envoy_applied_put_failures_total",
                    "Applied records whose write failed (retried every second until written).",
                    1.0,
                );
                unreported.insert(key, sealed);
            }
        }
        reported.insert(node, (version, error));
    }
}

/// What the reporter needs to know of a served snapshot, for the applied records and the
/// latency histograms.
#[derive(Clone)]
struct Served {
    model: Version,
    hash: String,
    trace: TraceContext,
    /// `ModelRecord::changed_at_ms` and `published_at_ms`.
    changed_at_ms: u64,
    published_at_ms: u64,
}

/// Snapshot version → what was served under it.
type Versions = BTreeMap<String, Served>;

/// How many served snapshot versions are remembered for the ACKs that name them: an ACK
/// of an older one comes from a node that has newer ones on the way, and is not reported.
pub const KEPT_VERSIONS: usize = 64;

/// Keep the `keep` newest versions (by the serving counter, the last part of the version).
pub fn prune_versions<V>(versions: &mut BTreeMap<String, V>, keep: usize) {
    while versions.len() > keep {
        let served = |k: &String| k.rsplit('.').next().and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        let Some(oldest) = versions.keys().min_by_key(|k| served(k)).cloned() else { return };
        versions.remove(&oldest);
    }
}

/// What outlives a session: the channels to the ADS server and the snapshot counter.
struct Serving {
    options: Options,
    snapshots: watch::Sender<Option<Arc<Snapshot>>>,
    versions: watch::Sender<Versions>,
    /// Numbers every snapshot this process serves, so versions never repeat.
    served: u64,
    /// The model version (epoch, generation) served, so an older one is never served after it.
    generation: Option<Version>,
    /// Until the first session starts the reporter, what it will report from.
    reporter_inputs: Option<(mpsc::Receiver<NodeEvent>, watch::Receiver<Versions>)>,
    reporter: Option<tokio::task::JoinHandle<()>>,
    /// The previous rendering, by piece: a change renders and encodes what it changed.
    builder: SnapshotBuilder,
}

/// Run until `shutdown` completes. The ADS server runs across sessions (see
/// `portico_bus::nats::supervise`) and serves nothing until the first model has been read:
/// an Envoy connecting to a renderer that just started keeps its configuration until then.
pub async fn run(
    config: ServiceConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServiceError> {
    let (snapshot_tx, snapshot_rx) = watch::channel(None);
    let (hash_tx, hash_rx) = watch::channel(BTreeMap::new());
    let (ack_tx, ack_rx) = mpsc::channel(NODE_EVENTS);

    let ads = Ads { snapshots: snapshot_rx, acks: ack_tx, mtls: config.tls.is_some() };
    let listen = config.listen;
    let mut builder = tonic::transport::Server::builder();
    match &config.tls {
        Some(tls) => {
            let tls_config = tonic::transport::ServerTlsConfig::new()
                .identity(tonic::transport::Identity::from_pem(&tls.cert_pem, &tls.key_pem))
                .client_ca_root(tonic::transport::Certificate::from_pem(&tls.client_ca_pem));
            builder = builder
                .tls_config(tls_config)
                .map_err(|e| ServiceError::Serve(listen, format!("the TLS certificate or key: {e}")))?;
        }
        None => tracing::warn!(
            %listen,
            "ADS is served without TLS: whoever reaches this port gets every client key and CA bundle; \
             pass --tls-cert, --tls-key and --client-ca (portico up does)"
        ),
    }
    // Bound here, before anything else: a port that cannot be had is a start-up error the
    // operator sees at once (and /readyz never says ready), not a surprise at shutdown.
    let incoming = tonic::transport::server::TcpIncoming::bind(listen)
        .map_err(|e| ServiceError::Serve(listen, format!("cannot listen: {e}")))?;
    let (stop_grpc, grpc_stopped) = tokio::sync::oneshot::channel::<()>();
    let server =
        tokio::spawn(builder.add_service(AggregatedDiscoveryServiceServer::new(ads)).serve_with_incoming_shutdown(
            incoming,
            async move {
                let _ = grpc_stopped.await;
            },
        ));
    tracing::info!(%listen, "Envoy renderer (ADS) running");
    let mut serving = Serving {
        options: Options { bind_address: config.bind_address, http_port: config.http_port, admin_port: 0 },
        snapshots: snapshot_tx,
        versions: hash_tx,
        served: 0,
        generation: None,
        reporter_inputs: Some((ack_rx, hash_rx)),
        reporter: None,
        builder: SnapshotBuilder::new(),
    };
    let outcome =
        portico_bus::nats::supervise(&config.bus, &[portico_bus::names::APPLIED], &mut serving, shutdown, session)
            .await;
    let _ = stop_grpc.send(());
    if let Some(reporter) = serving.reporter.take() {
        reporter.abort();
    }
    // Dropping the snapshot sender ends every ADS stream (they follow it), which the
    // graceful shutdown waits for: without it, a connected Envoy kept the renderer from
    // stopping until it was killed. A stream that still lingers is given up after 2 s.
    drop(serving);
    outcome?;
    match tokio::time::timeout(std::time::Duration::from_secs(2), server).await {
        Ok(joined) => joined
            .map_err(|e| ServiceError::Serve(listen, e.to_string()))?
            .map_err(|e| ServiceError::Serve(listen, e.to_string()))?,
        Err(_) => tracing::warn!("ADS streams did not end within 2 s of the shutdown; stopping anyway"),
    }
    Ok(())
}

async fn session(serving: &mut Serving, buckets: Buckets) -> Result<std::convert::Infallible, ServiceError> {
    // The reporter writes applied records with the first session's bucket handles, which
    // stay valid across reconnects (they name buckets, not connections).
    if let Some((acks, hashes)) = serving.reporter_inputs.take() {
        serving.reporter = Some(tokio::spawn(report(buckets.clone(), acks, hashes)));
    }
    let buckets = &buckets;
    let mut inputs = RendererInputs::new(buckets).await?;
    let mut wait: Option<std::time::Duration> = None;
    let mut causes = Vec::new();
    loop {
        tokio::select! {
            change = inputs.next(buckets) => causes = change?,
            () = async { tokio::time::sleep(wait.unwrap_or_default()).await }, if wait.is_some() => {}
        }
        wait = None;
        let Some(record) = inputs.model() else { continue };
        if serving.generation.is_some_and(|g| record.version() < g) {
            continue; // never go back
        }
        let started = std::time::Instant::now();
        let version = format!("{}.{}.{}", record.epoch, record.generation, serving.served + 1);
        let (snapshot, problems, reuse) = serving.builder.build(
            version.clone(),
            &record.model,
            &inputs.trust,
            inputs.trust_revision,
            &serving.options,
            |id| inputs.piece_digest(id),
        );
        let render_ms = started.elapsed().as_millis() as u64;
        if let Some(hold) = inputs.hold_back(!problems.is_empty()) {
            tracing::info!(
                generation = record.generation,
                problems = problems.len(),
                "waiting for trust material before serving"
            );
            wait = Some(hold);
            continue;
        }
        if let Some(first) = problems.first() {
            tracing::warn!(
                routes = problems.len(),
                first = %first,
                "routes served as 503 until their trust material arrives"
            );
        }
        serving.served += 1;
        let span = tracing::info_span!(parent: None, "envoy.serve", generation = record.generation, version = %version);
        // The ACKs of this version continue this span's trace (see `report`). The parent is
        // set before the span is entered: it cannot change once the span has started.
        let served_trace = portico_kit::telemetry::fold_causes(&span, &causes);
        let _entered = span.enter();
        serving.versions.send_modify(|m| {
            m.insert(
                version.clone(),
                Served {
                    model: record.version(),
                    hash: record.hash.clone(),
                    trace: served_trace,
                    changed_at_ms: record.changed_at_ms,
                    published_at_ms: record.published_at_ms,
                },
            );
            prune_versions(m, KEPT_VERSIONS);
        });
        serving.generation = Some(record.version());
        portico_kit::admin::set_ready(true);
        portico_kit::admin::gauge(
            "portico_renderer_envoy_generation",
            "The model generation served over ADS.",
            record.generation as f64,
        );
        let _ = serving.snapshots.send(Some(Arc::new(snapshot)));
        portico_kit::admin::release_memory();
        tracing::info!(
            generation = record.generation,
            version = %version,
            render_ms,
            pieces_rendered = reuse.rendered,
            pieces_reused = reuse.reused,
            took_ms = started.elapsed().as_millis() as u64,
            "serving"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_newest_versions_are_remembered_however_many_were_served() {
        let mut versions = BTreeMap::new();
        for served in 1..=10_000u64 {
            // Epoch and generation as they come; the serving counter orders them.
            versions.insert(format!("1764672000000.{}.{served}", served / 3), served);
            prune_versions(&mut versions, KEPT_VERSIONS);
            assert!(versions.len() <= KEPT_VERSIONS);
        }
        let mut kept: Vec<u64> = versions.values().copied().collect();
        kept.sort_unstable();
        assert_eq!(kept, (10_000 - KEPT_VERSIONS as u64 + 1..=10_000).collect::<Vec<_>>());
    }
}
