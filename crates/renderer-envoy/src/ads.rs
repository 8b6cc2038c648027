//! An ADS server, v3, in both variants: state of the world (`StreamAggregatedResources`)
//! and incremental (`DeltaAggregatedResources`, which the bootstrap Portico writes uses).
//!
//! Every resource carries its own version (a digest of its encoding), so a change is sent
//! as what changed: a delta stream gets only the resources added or changed and the names
//! removed; a state-of-the-world stream gets only the types whose content changed. Updates
//! go out in the order that avoids traffic drops (secrets, clusters, endpoints, then
//! listeners, routes). On a delta stream the listeners and routes of a change wait until
//! the node has taken its clusters and their endpoints (make before break: a new route
//! never points at a cluster still warming, which Envoy answers with 503). Each stream tracks the responses its node has not answered yet and
//! reports, per node, when it runs a snapshot (every response up to it acknowledged) or
//! rejected one (a NACK, with Envoy's reason).

use crate::Resources;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, ScopedRouteConfiguration};
use envoy_types::pb::envoy::config::{cluster::v3::Cluster, endpoint::v3::ClusterLoadAssignment};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Name;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// One resource: its version (a digest of its encoding) and its encoding, shared between
/// the snapshots (and the renderer's cache) that hold the same resource.
#[derive(Clone, Debug)]
pub struct Entry {
    pub version: Arc<str>,
    pub any: Arc<Any>,
}

impl Entry {
    /// The entry of an encoded resource; its version is a digest of the encoding.
    pub fn of(any: Any) -> Entry {
        Entry { version: digest(&any.value).into(), any: Arc::new(any) }
    }
}

/// The resources of one model, by type URL and name, with one version for the whole.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub version: String,
    /// Each type's entries, shared between snapshots while they are the same.
    pub resources: BTreeMap<String, Arc<BTreeMap<String, Entry>>>,
    /// Per type, a number two snapshots share only when that type's entries are the same
    /// (`next_generation`; a type without one is compared entry by entry): a subscription
    /// synced to it has nothing to do for that type. A route change leaves the 10,000
    /// clusters and load assignments alone, and each push compared them all (about 40,000
    /// lookups per push and node).
    pub generations: BTreeMap<String, u64>,
}

/// A number no snapshot's type has had (see `Snapshot::generations`).
pub fn next_generation() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Type URLs in the order an update is pushed: what routes depend on (`early_types`), then
/// what uses it (`late_types`).
pub fn push_order() -> [String; 6] {
    let ([a, b, c], [d, e, f]) = (early_types(), late_types());
    [a, b, c, d, e, f]
}

/// The types sent once the node has taken what they use (make before break). A shard's
/// routes go before the scopes that point at it: a new host's scope arrives once its
/// routes are there.
fn late_types() -> [String; 3] {
    [Listener::type_url(), RouteConfiguration::type_url(), ScopedRouteConfiguration::type_url()]
}

/// A resource's version: 64 bits of SipHash over its encoding (std's hasher with fixed
/// keys; a different build may number differently, which only makes a reconnecting Envoy
/// receive resources it already had).
fn digest(bytes: &[u8]) -> String {
    let mut h = std::hash::DefaultHasher::new();
    bytes.hash(&mut h);
    format!("{:016x}", h.finish())
}

impl Snapshot {
    pub fn new(version: String, r: &Resources) -> Snapshot {
        fn entries<'a, M: prost::Message + Name + 'a>(
            items: impl Iterator<Item = (&'a String, &'a M)>,
        ) -> BTreeMap<String, Entry> {
            items
                .map(|(name, message)| {
                    let any = crate::any(message);
                    (name.clone(), Entry::of(any))
                })
                .collect()
        }
        let resources: BTreeMap<String, Arc<BTreeMap<String, Entry>>> = BTreeMap::from([
            (Secret::type_url(), entries(r.secrets.iter().map(|s| (&s.name, s)))),
            (Cluster::type_url(), entries(r.clusters.iter().map(|c| (&c.name, c)))),
            (ClusterLoadAssignment::type_url(), entries(r.load_assignments.iter().map(|l| (&l.cluster_name, l)))),
            (Listener::type_url(), entries(r.listeners.iter().map(|l| (&l.name, l)))),
            (RouteConfiguration::type_url(), entries(r.route_configurations.iter().map(|c| (&c.name, c)))),
            (ScopedRouteConfiguration::type_url(), entries(r.scoped_routes.iter().map(|s| (&s.name, s)))),
        ])
        .into_iter()
        .map(|(t, m)| (t, Arc::new(m)))
        .collect();
        let generations = resources.keys().map(|t| (t.clone(), next_generation())).collect();
        Snapshot { version, resources, generations }
    }

    fn of_type(&self, type_url: &str) -> impl Iterator<Item = (&String, &Entry)> {
        self.resources.get(type_url).into_iter().flat_map(|m| m.iter())
    }
}

/// Listeners, clusters and scopes are subscribed to as a whole (wildcard); the other
/// types by name.
fn is_wildcard_type(type_url: &str) -> bool {
    type_url == Listener::type_url()
        || type_url == Cluster::type_url()
        || type_url == ScopedRouteConfiguration::type_url()
}

/// What the reporter hears from the ADS streams.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeEvent {
    /// The node runs this snapshot version: every response sent to it up to this snapshot
    /// has been acknowledged.
    Applied { node: String, version: String },
    /// The node rejected (NACKed) a response of this snapshot version.
    Rejected { node: String, version: String, type_url: String, error: String },
    /// A node's stream ended: what was tracked for it can go.
    Gone { node: String },
}

/// How many node events may wait for the reporter; a stream waits when it is full.
pub const NODE_EVENTS: usize = 1024;

#[derive(Clone)]
pub struct Ads {
    /// `None` until the first model is known: requests wait rather than get an empty config.
    pub snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
    pub acks: mpsc::Sender<NodeEvent>,
    /// Served over mutual TLS: a stream is served only to the node its client certificate
    /// names (a DNS subject alternative name equal to the node id).
    pub mtls: bool,
}

/// The node ids a client certificate vouches for: its DNS subject alternative names.
pub fn certificate_identities(der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else { return Vec::new() };
    let Ok(Some(san)) = cert.subject_alternative_name() else { return Vec::new() };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(name) => Some((*name).to_owned()),
            _ => None,
        })
        .collect()
}

/// Who may be served on a stream: anyone (plaintext), or the identities of the client
/// certificate. A TLS stream without a certificate is refused before anything is read.
fn identities<T>(ads: &Ads, request: &Request<T>) -> Result<Option<Vec<String>>, Status> {
    if !ads.mtls {
        return Ok(None);
    }
    let certs = request.peer_certs().ok_or_else(|| refused("no client certificate"))?;
    let leaf = certs.first().ok_or_else(|| refused("no client certificate"))?;
    Ok(Some(certificate_identities(leaf.as_ref())))
}

/// Whether a certificate's DNS name `name` names node `node`: only when equal. A wildcard
/// names no node: a certificate shared by several Envoys would let any of them claim
/// another's node id (and its SDS secrets). Kubernetes gives each Envoy pod its own
/// (`portico_watcher::envoy_identity`).
pub fn names_node(name: &str, node: &str) -> bool {
    !name.starts_with('*') && name == node
}

fn refused(why: &str) -> Status {
    portico_kit::admin::counter(
        "portico_renderer_envoy_refused_streams_total",
        "ADS streams refused: no client certificate, or a node id the certificate does not name.",
        1.0,
    );
    tracing::warn!(reason = why, "ADS stream refused");
    Status::permission_denied(format!("ADS refused: {why}"))
}

/// Whether a request may be served: its node (or the node the stream already proved) is
/// one the certificate names. `None` when it may; the refusal otherwise.
fn check_node(allowed: &Option<Vec<String>>, known: &str, node: Option<&str>) -> Option<Status> {
    let allowed = allowed.as_ref()?;
    let node = node.unwrap_or(known);
    if node.is_empty() {
        return Some(refused("the request names no node"));
    }
    if !allowed.iter().any(|a| names_node(a, node)) {
        return Some(refused(&format!("node {node:?} is not the one its certificate names ({})", allowed.join(", "))));
    }
    None
}

/// The responses a stream's node has not answered, and what to report when it has.
#[derive(Default)]
struct Tracker {
    node: String,
    /// Nonce → (type, snapshot version) of every response not acknowledged yet.
    outstanding: BTreeMap<u64, (String, String)>,
    /// The newest snapshot this stream has sent (or found nothing to send for).
    latest: Option<String>,
    reported: Option<String>,
    nonces: u64,
    /// The types the node has subscribed to.
    subscribed: BTreeSet<String>,
    /// A snapshot's listeners and routes are held back (make before break): not settled.
    deferring: bool,
    /// The clusters sent since the held-back routes were last released: what those routes
    /// wait for (`warm`).
    sent_clusters: BTreeSet<String>,
}

impl Tracker {
    /// A request on this stream: its node must be one the client certificate names (see
    /// `check_node`); then the node and the type it asks for are noted.
    fn admit(&mut self, allowed: &Option<Vec<String>>, node: Option<&str>, type_url: &str) -> Result<(), Status> {
        if let Some(denied) = check_node(allowed, &self.node, node) {
            return Err(denied);
        }
        if let Some(node) = node {
            self.node = node.to_owned();
        }
        self.subscribed.insert(type_url.to_owned());
        Ok(())
    }

    fn next_nonce(&mut self, type_url: &str, version: &str) -> String {
        self.latest = Some(version.to_owned());
        self.nonces += 1;
        self.outstanding.insert(self.nonces, (type_url.to_owned(), version.to_owned()));
        self.nonces.to_string()
    }

    /// The node answered the response `nonce` of `type_url`. An answer covers the earlier
    /// responses of its type too (a node may answer only the newest of several).
    fn answered(&mut self, type_url: &str, nonce: &str, error: Option<String>) -> Option<NodeEvent> {
        let nonce: u64 = nonce.parse().ok()?;
        let (_, version) = self.outstanding.get(&nonce)?.clone();
        self.outstanding.retain(|n, (t, _)| !(*n <= nonce && t == type_url));
        match error {
            Some(error) => {
                Some(NodeEvent::Rejected { node: self.node.clone(), version, type_url: type_url.to_owned(), error })
            }
            None => self.settled(),
        }
    }

    /// The node no longer wants any resource of `type_url` (e.g. its last cluster went, so
    /// it wants no endpoints): it ignores responses of that type, and will not answer them.
    fn abandon(&mut self, type_url: &str) {
        self.outstanding.retain(|_, (t, _)| t != type_url);
    }

    /// `Applied` once nothing is outstanding, once per snapshot. Not before the node has
    /// subscribed to both clusters and listeners (Envoy asks for listeners once its first
    /// clusters are in), so that a node that has only its clusters is not reported as
    /// running the snapshot.
    fn settled(&mut self) -> Option<NodeEvent> {
        let latest = self.latest.clone()?;
        let both = self.subscribed.contains(&Cluster::type_url()) && self.subscribed.contains(&Listener::type_url());
        if !both
            || self.deferring
            || !self.outstanding.is_empty()
            || self.node.is_empty()
            || self.reported.as_ref() == Some(&latest)
        {
            return None;
        }
        self.reported = Some(latest.clone());
        Some(NodeEvent::Applied { node: self.node.clone(), version: latest })
    }
}

/// How long a snapshot's listeners and routes wait for the node to take its clusters and
/// their endpoints before they are sent anyway (a node that rejected a cluster never
/// warms it; its routes must not wait forever).
pub const WARMING_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The types a snapshot's routes depend on: sent first, and taken by the node (every
/// response answered, every EDS cluster's endpoints subscribed to and sent) before the
/// listeners and routes that use them are sent (make before break).
fn early_types() -> [String; 3] {
    [Secret::type_url(), Cluster::type_url(), ClusterLoadAssignment::type_url()]
}

/// Whether the node has taken what `snapshot`'s routes need (see `early_types`): every
/// response of those types answered, and the clusters sent with this change warm. Only
/// those: a cluster the node rejected earlier never warms (Envoy never asks for its
/// endpoints), and waiting for it held every later change back for `WARMING_LIMIT`; and
/// looking at 10,000 clusters per change is what the generations spare the pushes.
fn warm(tracker: &Tracker, subs: &BTreeMap<String, DeltaSubscription>, snapshot: &Snapshot) -> bool {
    let early = early_types();
    if tracker.outstanding.values().any(|(t, _)| early.contains(t)) {
        return false;
    }
    let endpoints = subs.get(&ClusterLoadAssignment::type_url());
    let loads = snapshot.resources.get(&ClusterLoadAssignment::type_url());
    tracker.sent_clusters.iter().all(|name| {
        // An EDS cluster warms once its endpoints are subscribed to and sent.
        !loads.is_some_and(|l| l.contains_key(name))
            || endpoints.is_some_and(|e| e.covers(name) && e.known.contains_key(name))
    })
}

/// State of the world: what one type's subscription has been sent.
#[derive(Default)]
struct Subscription {
    names: Vec<String>,
    /// A digest of the resources last sent (their names and versions).
    sent: Option<u64>,
}

/// The resources of one type for a state-of-the-world subscription, and their digest.
fn sotw_resources<'a>(snapshot: &'a Snapshot, type_url: &str, names: &[String]) -> (Vec<&'a Entry>, u64) {
    let wildcard = is_wildcard_type(type_url);
    let mut h = std::hash::DefaultHasher::new();
    let entries: Vec<&Entry> = snapshot
        .of_type(type_url)
        // For the other types, an empty list subscribes to nothing (Envoy sends one when it
        // no longer needs any, e.g. after its last cluster went).
        .filter(|(name, _)| wildcard || names.contains(name))
        .map(|(name, entry)| {
            name.hash(&mut h);
            entry.version.hash(&mut h);
            entry
        })
        .collect();
    (entries, h.finish())
}

fn sotw_response(snapshot: &Snapshot, entries: Vec<&Entry>, type_url: &str, nonce: String) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: snapshot.version.clone(),
        resources: entries.into_iter().map(|e| (*e.any).clone()).collect(),
        type_url: type_url.to_owned(),
        nonce,
        ..Default::default()
    }
}

/// Which part of a delta a response carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pass {
    Update,
    Remove,
    Both,
}

/// Send the delta responses of `passes` (type, part) that have anything to say.
async fn send_passes(
    tx: &mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    tracker: &mut Tracker,
    subs: &mut BTreeMap<String, DeltaSubscription>,
    snapshot: &Snapshot,
    passes: impl Iterator<Item = (String, Pass)>,
) -> Result<(), ()> {
    for (type_url, pass) in passes {
        let Some(sub) = subs.get_mut(&type_url) else { continue };
        let Some(response) = sub.response(snapshot, &type_url, pass) else { continue };
        if type_url == Cluster::type_url() {
            resend_endpoints_of_updated(subs, &response);
            tracker.sent_clusters.extend(response.resources.iter().map(|r| r.name.clone()));
        }
        let nonce = tracker.next_nonce(&type_url, &snapshot.version);
        tx.send(Ok(DeltaDiscoveryResponse { nonce, ..response })).await.map_err(|_| ())?;
    }
    Ok(())
}

/// A cluster sent again (updated under the same name: its CA rotated, say) is a new
/// cluster to Envoy, which warms it only once it receives its ClusterLoadAssignment again
/// (the xDS protocol: it does not reuse the previous one). Forget that the node has those
/// endpoints, so that the next EDS pass (after CDS in `push_order`) sends them; otherwise
/// the cluster waits for Envoy's initial fetch timeout (15 s) before it serves.
fn resend_endpoints_of_updated(subs: &mut BTreeMap<String, DeltaSubscription>, clusters: &DeltaDiscoveryResponse) {
    if let Some(endpoints) = subs.get_mut(&ClusterLoadAssignment::type_url()) {
        if clusters.resources.is_empty() {
            return;
        }
        let endpoints = endpoints.touched();
        for resource in &clusters.resources {
            endpoints.known.remove(&resource.name);
        }
    }
}

/// Incremental: what one type's subscription covers and what the node has.
#[derive(Default)]
struct DeltaSubscription {
    wildcard: bool,
    names: BTreeSet<String>,
    /// Name → version of every resource the node has (as sent, or as it said it had).
    known: BTreeMap<String, Arc<str>>,
    /// The snapshot generation of this type (`Snapshot::generations`) whose updates and
    /// removals were all sent: while the snapshot's is the same, nothing differs. Cleared
    /// whenever `known`, `names` or `wildcard` change otherwise (`touched`).
    synced: Option<u64>,
}

impl DeltaSubscription {
    fn covers(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    /// What the subscription covers or what the node has changed other than by a
    /// response: the next response compares every entry.
    fn touched(&mut self) -> &mut DeltaSubscription {
        self.synced = None;
        self
    }

    /// The response that brings the node from what it has to `snapshot` (or the part of it
    /// `pass` says), if anything differs.
    fn response(&mut self, snapshot: &Snapshot, type_url: &str, pass: Pass) -> Option<DeltaDiscoveryResponse> {
        let generation = snapshot.generations.get(type_url).copied();
        if generation.is_some() && self.synced == generation {
            return None; // everything of this generation sent, nothing changed since
        }
        let mut resources = Vec::new();
        let mut sent = Vec::new();
        let updates = if pass == Pass::Remove { None } else { Some(snapshot.of_type(type_url)) };
        for (name, entry) in updates.into_iter().flatten() {
            if !(self.wildcard || self.names.contains(name)) {
                continue;
            }
            if self.known.get(name).map(|v| &**v) != Some(&*entry.version) {
                resources.push(Resource {
                    name: name.clone(),
                    version: entry.version.to_string(),
                    resource: Some((*entry.any).clone()),
                    ..Default::default()
                });
                sent.push((name, &entry.version));
            }
        }
        // What the node now has, recorded once the response is made: its copies (30,000
        // at a node's first request at 10,000 routes) are freed together after sending,
        // and the long-lived names are not scattered among them, which kept the freed
        // pages from going back to the system. The entry's own version is shared.
        for (name, version) in sent {
            self.known.insert(name.clone(), version.clone());
        }
        let current = snapshot.resources.get(type_url);
        let removed: Vec<String> = match pass {
            Pass::Update => Vec::new(),
            Pass::Remove | Pass::Both => self
                .known
                .keys()
                .filter(|name| !current.is_some_and(|c| c.contains_key(*name)) || !self.covers(name))
                .cloned()
                .collect(),
        };
        for name in &removed {
            self.known.remove(name);
        }
        if pass != Pass::Update {
            // Updates were sent by this pass or the Update pass before it (the same snapshot).
            self.synced = generation;
        }
        if resources.is_empty() && removed.is_empty() {
            return None;
        }
        Some(DeltaDiscoveryResponse {
            system_version_info: snapshot.version.clone(),
            resources,
            type_url: type_url.to_owned(),
            removed_resources: removed,
            ..Default::default()
        })
    }
}

/// ADS streams open now, for the metric.
static CONNECTED: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// Counts a stream's end, however its task ends.
struct Disconnect;

impl Drop for Disconnect {
    fn drop(&mut self) {
        let connected = CONNECTED.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) - 1;
        portico_kit::admin::gauge(
            "portico_renderer_envoy_connected_nodes",
            "Envoy ADS streams open now.",
            connected as f64,
        );
    }
}

/// Counts a stream while it runs.
fn connected() -> Disconnect {
    let connected = CONNECTED.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
    portico_kit::admin::gauge(
        "portico_renderer_envoy_connected_nodes",
        "Envoy ADS streams open now.",
        connected as f64,
    );
    Disconnect
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let allowed = identities(self, &request)?;
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::channel(32);
        let mut snapshots = self.snapshots.clone();
        let acks = self.acks.clone();
        tokio::spawn(async move {
            let _disconnect = connected();
            let mut tracker = Tracker::default();
            let mut subs: BTreeMap<String, Subscription> = BTreeMap::new();
            'stream: loop {
                tokio::select! {
                    message = incoming.message() => {
                        let Ok(Some(req)) = message else { break };
                        if let Err(denied) = tracker.admit(&allowed, req.node.as_ref().map(|n| n.id.as_str()), &req.type_url) {
                            let _ = tx.send(Err(denied)).await;
                            break;
                        }
                        let first = !subs.contains_key(&req.type_url);
                        let sub = subs.entry(req.type_url.clone()).or_default();
                        if !req.response_nonce.is_empty() {
                            let error = req.error_detail.as_ref().map(|e| e.message.clone());
                            if let Some(event) = tracker.answered(&req.type_url, &req.response_nonce, error) {
                                if acks.send(event).await.is_err() { break; }
                            }
                        }
                        // The names of a request are what the node wants now, even when it
                        // answers an older response (it may not have seen the newest yet).
                        if !first && req.resource_names == sub.names {
                            continue; // a plain ACK or NACK
                        }
                        // A new subscription, or other names: answer with the current snapshot.
                        sub.names = req.resource_names.clone();
                        if sub.names.is_empty() && !is_wildcard_type(&req.type_url) {
                            // Nothing of this type wanted any more: nothing to send or await.
                            sub.sent = None;
                            tracker.abandon(&req.type_url);
                            if let Some(event) = tracker.settled() {
                                if acks.send(event).await.is_err() { break; }
                            }
                            continue;
                        }
                        let Some(snapshot) = snapshots.borrow().clone() else {
                            continue; // answered when the first snapshot arrives
                        };
                        let (entries, digest) = sotw_resources(&snapshot, &req.type_url, &sub.names);
                        sub.sent = Some(digest);
                        let nonce = tracker.next_nonce(&req.type_url, &snapshot.version);
                        if tx.send(Ok(sotw_response(&snapshot, entries, &req.type_url, nonce))).await.is_err() {
                            break;
                        }
                    }
                    changed = snapshots.changed() => {
                        if changed.is_err() { break; }
                        let Some(snapshot) = snapshots.borrow_and_update().clone() else { continue };
                        tracker.latest = Some(snapshot.version.clone());
                        for type_url in push_order() {
                            let Some(sub) = subs.get_mut(&type_url) else { continue };
                            if sub.names.is_empty() && !is_wildcard_type(&type_url) {
                                continue; // nothing of this type wanted
                            }
                            let (entries, digest) = sotw_resources(&snapshot, &type_url, &sub.names);
                            if sub.sent == Some(digest) {
                                continue; // this type did not change
                            }
                            sub.sent = Some(digest);
                            let nonce = tracker.next_nonce(&type_url, &snapshot.version);
                            if tx.send(Ok(sotw_response(&snapshot, entries, &type_url, nonce))).await.is_err() {
                                break 'stream;
                            }
                        }
                        if let Some(event) = tracker.settled() {
                            if acks.send(event).await.is_err() { break; }
                        }
                    }
                }
            }
            if !tracker.node.is_empty() {
                let _ = acks.send(NodeEvent::Gone { node: tracker.node }).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let allowed = identities(self, &request)?;
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::channel(32);
        let mut snapshots = self.snapshots.clone();
        let acks = self.acks.clone();
        tokio::spawn(async move {
            let _disconnect = connected();
            let mut tracker = Tracker::default();
            let mut subs: BTreeMap<String, DeltaSubscription> = BTreeMap::new();
            // A snapshot whose listeners and routes wait for its clusters, until when.
            let mut deferred: Option<(Arc<Snapshot>, tokio::time::Instant)> = None;
            // The snapshot whose listeners, routes and scopes were sent last: what a node
            // subscribing to more of them meanwhile gets (a new scope's shard, say).
            let mut released: Option<Arc<Snapshot>> = None;
            let mut release_now = false;
            'stream: loop {
                // The held-back listeners and routes, once the node has warmed what they use
                // (or the limit passed), then the removals in reverse push order: nothing is
                // removed while something sent still refers to it.
                let ready =
                    deferred.as_ref().is_some_and(|(snapshot, _)| release_now || warm(&tracker, &subs, snapshot));
                if ready {
                    let (snapshot, _) = deferred.take().expect("checked above");
                    release_now = false;
                    tracker.deferring = false;
                    tracker.sent_clusters.clear();
                    let passes = late_types()
                        .into_iter()
                        .map(|t| (t, Pass::Update))
                        .chain(push_order().into_iter().rev().map(|t| (t, Pass::Remove)));
                    if send_passes(&tx, &mut tracker, &mut subs, &snapshot, passes).await.is_err() {
                        break 'stream;
                    }
                    released = Some(snapshot);
                    if let Some(event) = tracker.settled() {
                        if acks.send(event).await.is_err() {
                            break;
                        }
                    }
                }
                tokio::select! {
                    message = incoming.message() => {
                        let Ok(Some(req)) = message else { break };
                        if let Err(denied) = tracker.admit(&allowed, req.node.as_ref().map(|n| n.id.as_str()), &req.type_url) {
                            let _ = tx.send(Err(denied)).await;
                            break;
                        }
                        if !req.response_nonce.is_empty() {
                            let error = req.error_detail.as_ref().map(|e| e.message.clone());
                            // A node that rejected clusters or endpoints never warms them:
                            // the held-back routes go now, not after the warming limit.
                            if error.is_some() && early_types().contains(&req.type_url) && deferred.is_some() {
                                release_now = true;
                            }
                            if let Some(event) = tracker.answered(&req.type_url, &req.response_nonce, error) {
                                if acks.send(event).await.is_err() { break; }
                            }
                        }
                        let first = !subs.contains_key(&req.type_url);
                        let sub = subs.entry(req.type_url.clone()).or_default();
                        if first || !req.resource_names_subscribe.is_empty() || !req.resource_names_unsubscribe.is_empty() {
                            sub.touched();
                        }
                        if first {
                            // What the node has from an earlier stream (another replica, say).
                            sub.known = req.initial_resource_versions.iter().map(|(n, v)| (n.clone(), Arc::from(v.as_str()))).collect();
                            // A first request naming nothing subscribes to all (legacy wildcard).
                            sub.wildcard = req.resource_names_subscribe.is_empty() && is_wildcard_type(&req.type_url);
                        }
                        let changes = !req.resource_names_subscribe.is_empty() || !req.resource_names_unsubscribe.is_empty();
                        for name in &req.resource_names_subscribe {
                            if name == "*" { sub.wildcard = true } else { sub.names.insert(name.clone()); }
                        }
                        for name in &req.resource_names_unsubscribe {
                            if name == "*" { sub.wildcard = false } else { sub.names.remove(name); }
                            // Unsubscribed resources are dropped by the node itself.
                            if !sub.covers(name) { sub.known.remove(name); }
                        }
                        if !sub.wildcard && sub.names.is_empty() && !req.resource_names_unsubscribe.is_empty() {
                            // Nothing of this type wanted any more: nothing to send or await.
                            tracker.abandon(&req.type_url);
                            if let Some(event) = tracker.settled() {
                                if acks.send(event).await.is_err() { break; }
                            }
                            continue;
                        }
                        if !(first || changes) {
                            continue; // a plain ACK or NACK
                        }
                        let Some(latest) = snapshots.borrow().clone() else {
                            continue; // answered when the first snapshot arrives
                        };
                        // While a snapshot's routes wait for its clusters, a subscription to
                        // routes gets the ones sent before it (they use only warm clusters).
                        let snapshot = match (&deferred, &released) {
                            (Some(_), Some(released)) if late_types().contains(&req.type_url) => released.clone(),
                            _ => latest,
                        };
                        let response = match sub.response(&snapshot, &req.type_url, Pass::Both) {
                            Some(response) => response,
                            // Nothing to send, but a first request is always answered, so
                            // that the node knows the server has nothing more for it.
                            None if first => DeltaDiscoveryResponse {
                                system_version_info: snapshot.version.clone(),
                                type_url: req.type_url.clone(),
                                ..Default::default()
                            },
                            None => continue,
                        };
                        let nonce = tracker.next_nonce(&req.type_url, &snapshot.version);
                        if tx.send(Ok(DeltaDiscoveryResponse { nonce, ..response })).await.is_err() {
                            break;
                        }
                    }
                    changed = snapshots.changed() => {
                        if changed.is_err() { break; }
                        let Some(snapshot) = snapshots.borrow_and_update().clone() else { continue };
                        tracker.latest = Some(snapshot.version.clone());
                        // Make before break: secrets, clusters and endpoints now; listeners,
                        // routes and every removal once the node has taken them (below).
                        let early = early_types().into_iter().map(|t| (t, Pass::Update));
                        if send_passes(&tx, &mut tracker, &mut subs, &snapshot, early).await.is_err() {
                            break 'stream;
                        }
                        deferred = Some((snapshot, tokio::time::Instant::now() + WARMING_LIMIT));
                        tracker.deferring = true;
                    }
                    () = async {
                        tokio::time::sleep_until(deferred.as_ref().map_or_else(tokio::time::Instant::now, |(_, until)| *until)).await
                    }, if deferred.is_some() => {
                        tracing::warn!(node = %tracker.node, "the node did not take new clusters and endpoints within {WARMING_LIMIT:?}; sending the routes that use them anyway");
                        portico_kit::admin::counter(
                            "portico_renderer_envoy_warming_limit_total",
                            "Changes whose routes were sent after the warming limit, the node not having taken their clusters.",
                            1.0,
                        );
                        release_now = true;
                    }
                }
            }
            if !tracker.node.is_empty() {
                let _ = acks.send(NodeEvent::Gone { node: tracker.node }).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(version: &str, clusters: &[(&str, &str)]) -> Snapshot {
        let entries = clusters
            .iter()
            .map(|(name, content)| {
                let any = Any { type_url: Cluster::type_url(), value: content.as_bytes().to_vec() };
                (name.to_string(), Entry::of(any))
            })
            .collect();
        Snapshot {
            version: version.into(),
            resources: BTreeMap::from([(Cluster::type_url(), Arc::new(entries))]),
            generations: BTreeMap::new(),
        }
    }

    fn names(r: &DeltaDiscoveryResponse) -> (Vec<&str>, Vec<&str>) {
        (
            r.resources.iter().map(|r| r.name.as_str()).collect(),
            r.removed_resources.iter().map(String::as_str).collect(),
        )
    }

    #[test]
    fn a_certificate_names_only_its_own_node_and_a_wildcard_none() {
        assert!(names_node("portico-local", "portico-local"));
        assert!(!names_node("portico-local", "portico-other"));
        assert!(names_node("envoy-7d9f-x2.envoy.portico", "envoy-7d9f-x2.envoy.portico"));
        assert!(!names_node("*.envoy.portico", "envoy-7d9f-x2.envoy.portico"), "a shared certificate names no node");
        assert!(!names_node("*.envoy.portico", "*.envoy.portico"));
    }

    #[test]
    fn a_delta_carries_what_changed_and_removals_come_in_their_own_pass() {
        let t = Cluster::type_url();
        let mut sub = DeltaSubscription { wildcard: true, ..Default::default() };
        let one = snapshot("1", &[("a", "A"), ("b", "B")]);
        assert_eq!(names(&sub.response(&one, &t, Pass::Both).unwrap()), (vec!["a", "b"], vec![]));
        assert!(sub.response(&one, &t, Pass::Both).is_none(), "nothing changed, nothing sent");
        let two = snapshot("2", &[("a", "A2"), ("c", "C")]);
        assert_eq!(names(&sub.response(&two, &t, Pass::Update).unwrap()), (vec!["a", "c"], vec![]));
        assert_eq!(names(&sub.response(&two, &t, Pass::Remove).unwrap()), (vec![], vec!["b"]));
        assert!(sub.response(&two, &t, Pass::Both).is_none());
    }

    #[test]
    fn a_type_whose_generation_was_synced_is_skipped_until_the_subscription_changes() {
        let t = Cluster::type_url();
        let with_generation = |mut s: Snapshot, g: u64| {
            s.generations.insert(t.clone(), g);
            s
        };
        let mut sub = DeltaSubscription { wildcard: true, ..Default::default() };
        let one = with_generation(snapshot("1", &[("a", "A"), ("b", "B")]), 7);
        sub.response(&one, &t, Pass::Update).unwrap();
        // Updates alone do not sync it: the removals of the same snapshot are still due.
        assert_eq!(sub.synced, None);
        assert!(sub.response(&one, &t, Pass::Remove).is_none());
        assert_eq!(sub.synced, Some(7));
        // The same generation: nothing looked at. Proved by entries a full comparison
        // would send (the generation says they are the same, which a builder guarantees).
        let same = with_generation(snapshot("2", &[("a", "A"), ("c", "C")]), 7);
        assert!(sub.response(&same, &t, Pass::Both).is_none());
        // A subscription changed otherwise is compared in full again.
        sub.touched();
        assert_eq!(names(&sub.response(&same, &t, Pass::Both).unwrap()), (vec!["c"], vec!["b"]));
        assert_eq!(sub.synced, Some(7));
        // Another generation: compared.
        let other = with_generation(snapshot("3", &[("a", "A3"), ("c", "C")]), 8);
        assert_eq!(names(&sub.response(&other, &t, Pass::Both).unwrap()), (vec!["a"], vec![]));
        // Endpoints forgotten for an updated cluster: their subscription is compared again.
        let eds = ClusterLoadAssignment::type_url();
        let mut subs = BTreeMap::from([(eds.clone(), DeltaSubscription { synced: Some(9), ..Default::default() })]);
        let updated = DeltaDiscoveryResponse {
            resources: vec![Resource { name: "a".into(), ..Default::default() }],
            ..Default::default()
        };
        resend_endpoints_of_updated(&mut subs, &updated);
        assert_eq!(subs[&eds].synced, None);
    }

    /// What one push of a route change costs a delta stream at 10,000 clusters and load
    /// assignments, in the update and the removal pass of both types: with the
    /// generations the builder gives (skipped), and without (compared entry by entry).
    /// `cargo test --release -p portico-renderer-envoy --all-features --lib -- --ignored
    /// --nocapture bench_a_push`
    #[test]
    #[ignore = "a benchmark"]
    fn bench_a_push_of_a_route_change_at_ten_thousand_clusters() {
        let (cds, eds) = (Cluster::type_url(), ClusterLoadAssignment::type_url());
        let entries = |t: &str| -> BTreeMap<String, Entry> {
            (0..10_000)
                .map(|i| {
                    let name = format!("bench_svc-{i}_8443_{:016x}", i * 7919);
                    (name, Entry::of(Any { type_url: t.to_owned(), value: format!("{i}").into_bytes() }))
                })
                .collect()
        };
        let snapshot = |generations: bool, g: u64| Snapshot {
            version: format!("{g}"),
            resources: BTreeMap::from([(cds.clone(), Arc::new(entries(&cds))), (eds.clone(), Arc::new(entries(&eds)))]),
            generations: if generations {
                BTreeMap::from([(cds.clone(), g), (eds.clone(), g)])
            } else {
                BTreeMap::new()
            },
        };
        for generations in [false, true] {
            let first = snapshot(generations, 1);
            let names: BTreeSet<String> = first.resources[&eds].keys().cloned().collect();
            let mut subs = [
                (cds.clone(), DeltaSubscription { wildcard: true, ..Default::default() }),
                (eds.clone(), DeltaSubscription { names, ..Default::default() }),
            ];
            for (t, sub) in &mut subs {
                sub.response(&first, t, Pass::Both);
            }
            // The next snapshot: the same clusters and endpoints (a route changed).
            let next = snapshot(generations, 1);
            let started = std::time::Instant::now();
            let runs = 20;
            for _ in 0..runs {
                for pass in [Pass::Update, Pass::Remove] {
                    for (t, sub) in &mut subs {
                        assert!(sub.response(&next, t, pass).is_none());
                    }
                }
            }
            let each = started.elapsed() / runs;
            println!("a push with nothing to send for 10,000 clusters and their endpoints, generations {generations}: {each:?}");
        }
    }

    #[test]
    fn held_back_routes_wait_for_the_clusters_of_their_change_and_no_other() {
        let (cds, eds) = (Cluster::type_url(), ClusterLoadAssignment::type_url());
        let mut snap = snapshot("1", &[("new", "N"), ("rejected", "R")]);
        let loads = ["new", "rejected"]
            .iter()
            .map(|n| (n.to_string(), Entry::of(Any { type_url: eds.clone(), value: b"E".to_vec() })))
            .collect();
        snap.resources.insert(eds.clone(), Arc::new(loads));
        let known = |names: &[&str]| names.iter().map(|n| (n.to_string(), Arc::from("v"))).collect();
        let mut subs = BTreeMap::from([
            (
                cds.clone(),
                DeltaSubscription { wildcard: true, known: known(&["new", "rejected"]), ..Default::default() },
            ),
            (eds.clone(), DeltaSubscription::default()),
        ]);
        // "rejected" was sent by an earlier change and never warmed (the node refused it).
        let mut tracker = Tracker { sent_clusters: ["new".to_owned()].into(), ..Default::default() };
        assert!(!warm(&tracker, &subs, &snap), "this change's cluster has no endpoints yet");
        let endpoints = subs.get_mut(&eds).unwrap();
        endpoints.names.insert("new".into());
        assert!(!warm(&tracker, &subs, &snap), "subscribed to, not sent yet");
        subs.get_mut(&eds).unwrap().known = known(&["new"]);
        assert!(warm(&tracker, &subs, &snap), "warm, whatever the earlier rejected cluster");
        tracker.outstanding.insert(1, (eds.clone(), "1".into()));
        assert!(!warm(&tracker, &subs, &snap), "an endpoints response not answered yet");
    }

    #[test]
    fn a_cluster_updated_under_its_name_gets_its_endpoints_again() {
        let (cds, eds) = (Cluster::type_url(), ClusterLoadAssignment::type_url());
        let with_endpoints = |mut s: Snapshot, names: &[&str]| {
            let entries = names
                .iter()
                .map(|n| (n.to_string(), Entry::of(Any { type_url: eds.clone(), value: b"E".to_vec() })))
                .collect();
            s.resources.insert(eds.clone(), Arc::new(entries));
            s
        };
        let one = with_endpoints(snapshot("1", &[("a", "A"), ("b", "B")]), &["a", "b"]);
        let mut subs = BTreeMap::from([
            (cds.clone(), DeltaSubscription { wildcard: true, ..Default::default() }),
            (eds.clone(), DeltaSubscription { names: ["a".to_owned(), "b".to_owned()].into(), ..Default::default() }),
        ]);
        for t in [&cds, &eds] {
            subs.get_mut(t).unwrap().response(&one, t, Pass::Both).unwrap();
        }
        // Cluster a changes (its CA rotated); its endpoints do not.
        let two = with_endpoints(snapshot("2", &[("a", "A2"), ("b", "B")]), &["a", "b"]);
        let clusters = subs.get_mut(&cds).unwrap().response(&two, &cds, Pass::Update).unwrap();
        assert_eq!(names(&clusters), (vec!["a"], vec![]));
        resend_endpoints_of_updated(&mut subs, &clusters);
        let endpoints = subs.get_mut(&eds).unwrap().response(&two, &eds, Pass::Update).expect("a's endpoints again");
        assert_eq!(names(&endpoints), (vec!["a"], vec![]), "only the updated cluster's");
    }

    #[test]
    fn a_node_that_reconnects_gets_only_what_it_lacks_and_named_subscriptions_only_their_names() {
        let t = Cluster::type_url();
        let one = snapshot("1", &[("a", "A"), ("b", "B")]);
        let known = BTreeMap::from([("a".to_owned(), Arc::from(digest(b"A"))), ("gone".to_owned(), Arc::from("x"))]);
        let mut sub = DeltaSubscription { wildcard: true, known, ..Default::default() };
        assert_eq!(names(&sub.response(&one, &t, Pass::Both).unwrap()), (vec!["b"], vec!["gone"]));
        let mut named = DeltaSubscription { names: BTreeSet::from(["b".to_owned()]), ..Default::default() };
        assert_eq!(names(&named.response(&one, &t, Pass::Both).unwrap()), (vec!["b"], vec![]));
    }

    #[test]
    fn a_node_runs_a_snapshot_once_every_response_is_answered_and_a_nack_names_its_snapshot() {
        let (cds, lds, eds) = (Cluster::type_url(), Listener::type_url(), ClusterLoadAssignment::type_url());
        let mut tracker = Tracker { node: "n".into(), ..Default::default() };
        tracker.subscribed.insert(cds.clone());
        let first = tracker.next_nonce(&cds, "v1");
        assert_eq!(tracker.answered(&cds, &first, None), None, "listeners not subscribed yet");
        tracker.subscribed.insert(lds.clone());
        let l = tracker.next_nonce(&lds, "v1");
        assert_eq!(
            tracker.answered(&lds, &l, None),
            Some(NodeEvent::Applied { node: "n".into(), version: "v1".into() })
        );
        // Two responses of a type; the answer to the newer one covers the older.
        let (_older, c2, _endpoints) =
            (tracker.next_nonce(&cds, "v2"), tracker.next_nonce(&cds, "v3"), tracker.next_nonce(&eds, "v3"));
        assert_eq!(tracker.answered(&cds, &c2, None), None, "endpoints outstanding");
        tracker.abandon(&eds); // the node no longer wants endpoints
        assert_eq!(tracker.settled(), Some(NodeEvent::Applied { node: "n".into(), version: "v3".into() }));
        let bad = tracker.next_nonce(&lds, "v4");
        assert_eq!(
            tracker.answered(&lds, &bad, Some("no".into())),
            Some(NodeEvent::Rejected { node: "n".into(), version: "v4".into(), type_url: lds, error: "no".into() })
        );
    }
}
