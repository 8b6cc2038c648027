//! An ADS server (state of the world, v3): every connected Envoy gets the current snapshot
//! of resources for the types it subscribes to, in the order that avoids traffic drops
//! (secrets, clusters, endpoints, then listeners, routes), and again on every change.
//! ACKs and NACKs are told apart by the nonce and `error_detail`, per node.

use crate::Resources;
use envoy_types::pb::envoy::config::{cluster::v3::Cluster, endpoint::v3::ClusterLoadAssignment};
use envoy_types::pb::envoy::config::{listener::v3::Listener, route::v3::RouteConfiguration};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Name;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// The resources of one model, by type URL, with one version for all of them.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub version: String,
    pub resources: BTreeMap<String, Vec<(String, Any)>>,
}

/// Type URLs in the order an update is pushed.
pub fn push_order() -> [String; 5] {
    [
        Secret::type_url(),
        Cluster::type_url(),
        ClusterLoadAssignment::type_url(),
        Listener::type_url(),
        RouteConfiguration::type_url(),
    ]
}

impl Snapshot {
    pub fn new(version: String, r: &Resources) -> Snapshot {
        let mut resources = BTreeMap::new();
        let pack = |items: Vec<(String, Any)>| items;
        resources.insert(Secret::type_url(), pack(r.secrets.iter().map(|s| (s.name.clone(), crate::any(s))).collect()));
        resources
            .insert(Cluster::type_url(), pack(r.clusters.iter().map(|c| (c.name.clone(), crate::any(c))).collect()));
        resources.insert(
            ClusterLoadAssignment::type_url(),
            r.load_assignments.iter().map(|l| (l.cluster_name.clone(), crate::any(l))).collect(),
        );
        resources.insert(Listener::type_url(), r.listeners.iter().map(|l| (l.name.clone(), crate::any(l))).collect());
        resources.insert(
            RouteConfiguration::type_url(),
            r.route_configurations.iter().map(|c| (c.name.clone(), crate::any(c))).collect(),
        );
        Snapshot { version, resources }
    }
}

/// What the reporter hears from the ADS streams.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeEvent {
    Ack(Ack),
    /// A node's stream ended: what was tracked for it can go.
    Gone {
        node: String,
    },
}

/// How many node events may wait for the reporter; a stream waits when it is full.
pub const NODE_EVENTS: usize = 1024;

/// What a node said about a version of a type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    pub node: String,
    pub type_url: String,
    pub version: String,
    /// `Some` for a NACK: Envoy's reason.
    pub error: Option<String>,
    /// Every type this stream has subscribed to.
    pub subscribed: Vec<String>,
}

#[derive(Clone)]
pub struct Ads {
    /// `None` until the first model is known: requests wait rather than get an empty config.
    pub snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
    pub acks: mpsc::Sender<NodeEvent>,
}

#[derive(Default)]
struct Subscription {
    names: Vec<String>,
    sent_version: Option<String>,
    nonce: String,
}

/// The response for one type: all resources for the wildcard types (listeners,
/// clusters), the named ones for the others.
fn response(snapshot: &Snapshot, type_url: &str, names: &[String], nonce: &str) -> DiscoveryResponse {
    let wildcard = type_url == Listener::type_url() || type_url == Cluster::type_url();
    let resources = snapshot
        .resources
        .get(type_url)
        .into_iter()
        .flatten()
        // For the other types, an empty list subscribes to nothing (Envoy sends one when it
        // no longer needs any, e.g. after its last cluster went).
        .filter(|(name, _)| wildcard || names.contains(name))
        .map(|(_, any)| any.clone())
        .collect();
    DiscoveryResponse {
        version_info: snapshot.version.clone(),
        resources,
        type_url: type_url.to_owned(),
        nonce: nonce.to_owned(),
        ..Default::default()
    }
}

/// ADS streams open now, for the metric.
static CONNECTED: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// Counts a stream's end, however its task ends.
struct Disconnect;

impl Drop for Disconnect {
    fn drop(&mut self) {
        let connected = CONNECTED.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) - 1;
        portico_bus::admin::gauge(
            "portico_renderer_envoy_connected_nodes",
            "Envoy ADS streams open now.",
            connected as f64,
        );
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::channel(32);
        let mut snapshots = self.snapshots.clone();
        let acks = self.acks.clone();
        tokio::spawn(async move {
            let connected = CONNECTED.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            portico_bus::admin::gauge(
                "portico_renderer_envoy_connected_nodes",
                "Envoy ADS streams open now.",
                connected as f64,
            );
            let _disconnect = Disconnect;
            let mut node = String::new();
            let mut subs: BTreeMap<String, Subscription> = BTreeMap::new();
            let mut nonces = 0u64;
            'stream: loop {
                tokio::select! {
                    message = incoming.message() => {
                        let Ok(Some(req)) = message else { break };
                        if let Some(n) = &req.node {
                            node = n.id.clone();
                        }
                        let sub = subs.entry(req.type_url.clone()).or_default();
                        if !req.response_nonce.is_empty() {
                            if req.response_nonce != sub.nonce {
                                continue; // a reply to an older response
                            }
                            let error = req.error_detail.as_ref().map(|e| e.message.clone());
                            let version = if error.is_some() { sub.sent_version.clone().unwrap_or_default() } else { req.version_info.clone() };
                            let subscribed = subs.keys().cloned().collect();
                            let ack = Ack { node: node.clone(), type_url: req.type_url.clone(), version, error, subscribed };
                            let _ = acks.send(NodeEvent::Ack(ack)).await;
                            let sub = subs.get_mut(&req.type_url).expect("just used");
                            if req.resource_names == sub.names {
                                continue; // a plain ACK or NACK
                            }
                        }
                        let sub = subs.get_mut(&req.type_url).expect("just inserted");
                        sub.names = req.resource_names.clone();
                        nonces += 1;
                        sub.nonce = nonces.to_string();
                        let Some(snapshot) = snapshots.borrow().clone() else {
                            continue; // answered when the first snapshot arrives
                        };
                        sub.sent_version = Some(snapshot.version.clone());
                        if tx.send(Ok(response(&snapshot, &req.type_url, &sub.names, &sub.nonce))).await.is_err() {
                            break;
                        }
                    }
                    changed = snapshots.changed() => {
                        if changed.is_err() { break; }
                        let Some(snapshot) = snapshots.borrow_and_update().clone() else { continue };
                        for type_url in push_order() {
                            let Some(sub) = subs.get_mut(&type_url) else { continue };
                            if sub.sent_version.as_ref() == Some(&snapshot.version) { continue; }
                            nonces += 1;
                            sub.nonce = nonces.to_string();
                            sub.sent_version = Some(snapshot.version.clone());
                            if tx.send(Ok(response(&snapshot, &type_url, &sub.names, &sub.nonce))).await.is_err() {
                                break 'stream;
                            }
                        }
                    }
                }
            }
            if !node.is_empty() {
                let _ = acks.send(NodeEvent::Gone { node }).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented("Portico serves state-of-the-world ADS; configure api_type: GRPC"))
    }
}
