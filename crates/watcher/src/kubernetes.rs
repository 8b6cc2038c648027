//! The watcher's Kubernetes source: kube-runtime watchers, one per kind (and per namespace
//! when limited; two for Secrets, one per accepted type, by field selector), feeding the
//! same bus as the file source.
//!
//! - The watchers run for the whole process; the bus side runs as sessions (see
//!   `portico_bus::nats::supervise`), so a NATS restart republishes everything.
//! - A relist (the first list, and every restart of a watch, `410 Gone` included) is
//!   buffered until it is complete (`InitDone`), then replaces what that watcher had
//!   listed: objects missing from it are deleted, so nothing is lost or left over.
//! - A kind's `sync.<kind>` marker (and the secrets bucket's `sync`) is published once all
//!   of its watchers have completed a list.
//! - Watch errors restart the watch with kube-runtime's default backoff; while any watch
//!   fails (RBAC, a CRD removed, the API unreachable) the watcher is not ready and says
//!   which. A watch task that ends (a panic) stops the watcher with an error naming it,
//!   so that it is restarted whole rather than serving a world that no longer follows
//!   that kind.

use crate::service::{apply, existing_keys, key_of, put_marker, Bucket, ServiceError, State};
use crate::{convert, convert_gateway, crds, gateway_api};
use futures_util::StreamExt;
use k8s_openapi::api::{core::v1 as core, discovery::v1 as discovery, networking::v1 as networking};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use portico_bus::names;
use portico_bus::nats::{Buckets, ConnectConfig};
use portico_model::{Kind, Object};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The Secret types Portico reads (SPEC section 1); each is watched with its own field
/// selector, so other Secrets (service-account tokens, Helm releases) never leave the API.
pub const SECRET_TYPES: [&str; 2] = ["Opaque", "kubernetes.io/tls"];

#[derive(Clone, Debug)]
pub struct KubeConfig {
    pub bus: ConnectConfig,
    /// Namespaces to watch; empty for all.
    pub namespaces: Vec<String>,
    /// Quiet time after a change before publishing, and the longest a change waits.
    pub holdoff: Duration,
    pub max_delay: Duration,
    /// Status write-back (`None`: statuses stay on the bus only).
    pub status: Option<crate::status::StatusConfig>,
    /// Sign the Envoy pods' ADS certificates (`envoy_identity`), in the active replica.
    pub envoy_signer: Option<crate::envoy_identity::SignerConfig>,
    /// Whether to watch the Gateway API kinds (and ConfigMaps) (`--gateway-api`).
    pub gateway_api: GatewayApiMode,
}

/// `--gateway-api`: watch the Gateway API kinds always, never, or when the API server
/// serves BackendTLSPolicy v1 (its CRDs are installed: Standard channel v1.4 or later).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum GatewayApiMode {
    Off,
    #[default]
    Auto,
    On,
}

impl std::str::FromStr for GatewayApiMode {
    type Err = String;
    fn from_str(value: &str) -> Result<Self, String> {
        match value {
            "off" | "false" => Ok(GatewayApiMode::Off),
            "auto" => Ok(GatewayApiMode::Auto),
            "on" | "true" => Ok(GatewayApiMode::On),
            other => Err(format!("{other:?} is not auto, on or off")),
        }
    }
}

/// Whether the API server serves gateway.networking.k8s.io/v1 BackendTLSPolicies (asked
/// of its discovery API, again every 2 s while it cannot answer).
async fn gateway_api_served(client: &Client) -> bool {
    loop {
        match client.list_api_group_resources("gateway.networking.k8s.io/v1").await {
            Ok(list) => return list.resources.iter().any(|r| r.name == "backendtlspolicies"),
            Err(kube::Error::Api(e)) if e.code == 404 => return false,
            Err(e) => {
                tracing::warn!(error = %e, "asking the API server whether it serves the Gateway API failed; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

/// One watcher: a kind, a namespace (or all) and a field selector.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct StreamId {
    kind: Kind,
    namespace: Option<String>,
    fields: Option<String>,
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} in {}", self.kind, self.namespace.as_deref().unwrap_or("all namespaces"))?;
        match &self.fields {
            Some(fields) => write!(f, " ({fields})"),
            None => Ok(()),
        }
    }
}

/// What the watchers know, shared with the bus sessions.
#[derive(Default)]
struct World {
    /// Every object, with the watcher that listed it.
    objects: BTreeMap<(Bucket, String), (Object, usize)>,
    /// Per watcher: the keys of a relist in progress.
    relisting: BTreeMap<usize, BTreeMap<(Bucket, String), Object>>,
    /// Watchers that have completed a list.
    listed: BTreeSet<usize>,
    /// Watchers whose last attempt failed, with the error.
    failing: BTreeMap<usize, String>,
    /// Bumped on every change, so sessions know to publish.
    revision: u64,
}

impl World {
    /// Drop what watcher `id` listed under this object's namespace and name.
    fn forget(&mut self, id: usize, meta: &kube::api::ObjectMeta) {
        // Cluster-scoped objects (IngressClass) are kept under `CLUSTER`.
        let ns = meta.namespace.as_deref().unwrap_or(portico_model::CLUSTER);
        let name = meta.name.as_deref().unwrap_or_default();
        self.objects.retain(|_, (o, owner)| {
            !(*owner == id && o.meta().namespace.as_str() == ns && o.meta().name.as_str() == name)
        });
    }
}

fn streams(namespaces: &[String], gateway_api: bool) -> Vec<StreamId> {
    let scopes: Vec<Option<String>> =
        if namespaces.is_empty() { vec![None] } else { namespaces.iter().cloned().map(Some).collect() };
    let mut out = Vec::new();
    for kind in Kind::ALL {
        if !gateway_api && (kind.is_gateway_api() || kind == Kind::ConfigMap) {
            continue;
        }
        if matches!(kind, Kind::IngressClass | Kind::GatewayClass) {
            // Cluster-scoped: one watch, whatever namespaces are watched.
            out.push(StreamId { kind, namespace: None, fields: None });
            continue;
        }
        for namespace in &scopes {
            if kind == Kind::Secret {
                for t in SECRET_TYPES {
                    out.push(StreamId { kind, namespace: namespace.clone(), fields: Some(format!("type={t}")) });
                }
            } else {
                out.push(StreamId { kind, namespace: namespace.clone(), fields: None });
            }
        }
    }
    out
}

fn api<K>(client: &Client, namespace: &Option<String>) -> Api<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The label of Portico's own Secrets (`portico nats-credentials` sets it): the watcher
/// leaves them out, so their private keys and passwords never reach the bus.
pub const INTERNAL_LABEL: &str = "portico.dev/internal";

/// Watch one kind (in one namespace, or all) into the shared world; runs until the process stops.
async fn watch_kind<K, F>(
    api: Api<K>,
    id: usize,
    stream: StreamId,
    world: Arc<Mutex<World>>,
    changed: Arc<tokio::sync::Notify>,
    to_object: F,
) where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    F: Fn(&K) -> Result<Object, convert::ConvertError>,
{
    let mut config = watcher::Config::default();
    if let Some(fields) = &stream.fields {
        config = config.fields(fields);
    }
    if stream.kind == Kind::Secret {
        // Portico's own credentials (NATS passwords, ADS keys) are never relayed to the bus.
        config = config.labels(&format!("{INTERNAL_LABEL}!=true"));
    }
    let convert = |k: &K| match to_object(k) {
        Ok(object) => Some(object),
        // A ConfigMap without `ca.crt`: not trust material, nothing to relay.
        Err(convert::ConvertError::NoCaCertificate) => None,
        Err(e) => {
            let name = k.meta().name.clone().unwrap_or_default();
            let namespace = k.meta().namespace.clone().unwrap_or_default();
            tracing::warn!(kind = ?stream.kind, object = %format!("{namespace}/{name}"), error = %e, "cannot be read; left out");
            None
        }
    };
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                tracing::warn!(watch = %stream, error = %e, "watch failed; not ready until it works again; retrying with backoff");
                world.lock().expect("the world lock").failing.insert(id, e.to_string());
                changed.notify_one();
                continue;
            }
        };
        let mut w = world.lock().expect("the world lock");
        if w.failing.remove(&id).is_some() {
            tracing::info!(watch = %stream, "watch works again");
        }
        match event {
            Event::Init => {
                w.relisting.insert(id, BTreeMap::new());
            }
            Event::InitApply(k) => {
                if let Some(object) = convert(&k) {
                    w.relisting.entry(id).or_default().insert(key_of(&object), object);
                }
            }
            Event::InitDone => {
                let listed = w.relisting.remove(&id).unwrap_or_default();
                let gone: Vec<_> = w
                    .objects
                    .iter()
                    .filter(|(key, (_, owner))| *owner == id && !listed.contains_key(*key))
                    .map(|(key, _)| key.clone())
                    .collect();
                for key in &gone {
                    w.objects.remove(key);
                }
                let count = listed.len();
                for (key, object) in listed {
                    w.objects.insert(key, (object, id));
                }
                w.listed.insert(id);
                w.revision += 1;
                tracing::info!(kind = ?stream.kind, namespace = ?stream.namespace, fields = ?stream.fields, objects = count, removed = gone.len(), "listed");
            }
            Event::Apply(k) => {
                let key = convert(&k).map(|o| (key_of(&o), o));
                match key {
                    Some((key, object)) => {
                        w.objects.insert(key, (object, id));
                    }
                    None => {
                        // Unreadable now: whatever was published for it must go.
                        w.forget(id, k.meta());
                    }
                }
                w.revision += 1;
            }
            Event::Delete(k) => {
                w.forget(id, k.meta());
                w.revision += 1;
            }
        }
        drop(w);
        changed.notify_one();
    }
}

/// Start a watcher per stream; each task's output names its stream.
fn start_watchers(
    client: &Client,
    streams: &[StreamId],
    world: &Arc<Mutex<World>>,
    changed: &Arc<tokio::sync::Notify>,
) -> tokio::task::JoinSet<String> {
    let mut tasks = tokio::task::JoinSet::new();
    for (id, stream) in streams.iter().enumerate() {
        let name = stream.to_string();
        let (world, changed, s) = (world.clone(), changed.clone(), stream.clone());
        let ns = &stream.namespace;
        match stream.kind {
            Kind::Service => {
                tasks.spawn(named(
                    name,
                    watch_kind(api::<core::Service>(client, ns), id, s, world, changed, |o| {
                        convert::service(o).map(Object::Service)
                    }),
                ));
            }
            Kind::EndpointSlice => {
                tasks.spawn(named(
                    name,
                    watch_kind(api::<discovery::EndpointSlice>(client, ns), id, s, world, changed, |o| {
                        convert::endpoint_slice(o).map(Object::EndpointSlice)
                    }),
                ));
            }
            Kind::Secret => {
                tasks.spawn(named(
                    name,
                    watch_kind(api::<core::Secret>(client, ns), id, s, world, changed, |o| {
                        convert::secret(o).map(Object::Secret)
                    }),
                ));
            }
            Kind::HttpProxy => {
                tasks.spawn(named(
                    name,
                    watch_kind(api::<crds::HTTPProxy>(client, ns), id, s, world, changed, |o| {
                        convert::http_proxy(o).map(Object::HttpProxy)
                    }),
                ));
            }
            Kind::TlsCertificateDelegation => {
                tasks.spawn(named(
                    name,
                    watch_kind(api::<crds::TLSCertificateDelegation>(client, ns), id, s, world, changed, |o| {
                        convert::delegation(o).map(Object::TlsCertificateDelegation)
                    }),
                ));
            }
            Kind::VoyagerIngress => {
                tasks.spawn(named(
                    name,
                    watch_kind(api::<crds::VoyagerIngress>(client, ns), id, s, world, changed, |o| {
                        convert::voyager_ingress(o).map(Object::VoyagerIngress)
                    }),
                ));
            }
            Kind::Ingress => {
                tasks.spawn(named(
                    name,
                    watch_kind(api::<networking::Ingress>(client, ns), id, s, world, changed, |o| {
                        convert::ingress(o).map(Object::Ingress)
                    }),
                ));
            }
            Kind::IngressClass => {
                let api = Api::<networking::IngressClass>::all(client.clone());
                tasks.spawn(named(
                    name,
                    watch_kind(api, id, s, world, changed, |o| convert::ingress_class(o).map(Object::IngressClass)),
                ));
            }
            Kind::ConfigMap => {
                tasks.spawn(named(
                    name,
                    watch_kind(api::<core::ConfigMap>(client, ns), id, s, world, changed, |o| {
                        convert::config_map(o)
                            .and_then(|c| {
                                if c.data.is_empty() {
                                    Err(convert::ConvertError::NoCaCertificate)
                                } else {
                                    Ok(c)
                                }
                            })
                            .map(Object::Secret)
                    }),
                ));
            }
            Kind::GatewayClass => {
                let api = Api::<gateway_api::gatewayclasses::GatewayClass>::all(client.clone());
                tasks.spawn(named(
                    name,
                    watch_kind(api, id, s, world, changed, |o| {
                        convert_gateway::gateway_class(o).map(Object::GatewayClass)
                    }),
                ));
            }
            Kind::Gateway => {
                tasks.spawn(named(
                    name,
                    watch_kind(api::<gateway_api::gateways::Gateway>(client, ns), id, s, world, changed, |o| {
                        convert_gateway::gateway(o).map(Object::Gateway)
                    }),
                ));
            }
            Kind::HttpRoute => {
                tasks.spawn(named(
                    name,
                    watch_kind(api::<gateway_api::httproutes::HttpRoute>(client, ns), id, s, world, changed, |o| {
                        convert_gateway::http_route(o).map(Object::HttpRoute)
                    }),
                ));
            }
            Kind::ReferenceGrant => {
                tasks.spawn(named(
                    name,
                    watch_kind(
                        api::<gateway_api::referencegrants::ReferenceGrant>(client, ns),
                        id,
                        s,
                        world,
                        changed,
                        |o| convert_gateway::reference_grant(o).map(Object::ReferenceGrant),
                    ),
                ));
            }
            Kind::BackendTlsPolicy => {
                tasks.spawn(named(
                    name,
                    watch_kind(
                        api::<gateway_api::backendtlspolicies::BackendTlsPolicy>(client, ns),
                        id,
                        s,
                        world,
                        changed,
                        |o| convert_gateway::backend_tls_policy(o).map(Object::BackendTlsPolicy),
                    ),
                ));
            }
        }
    }
    tasks
}

/// `task`, whose output is `name`.
async fn named(name: String, task: impl Future<Output = ()>) -> String {
    task.await;
    name
}

/// Wait until one of the watch tasks ends (they run for the whole process: only a panic
/// ends one) and say which, and why.
async fn first_ended(tasks: &mut tokio::task::JoinSet<String>) -> ServiceError {
    match tasks.join_next().await {
        Some(Ok(watch)) => ServiceError::WatchEnded { watch, reason: "its stream ended".to_owned() },
        Some(Err(e)) => {
            let reason = if e.is_panic() {
                let panic = e.into_panic();
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".to_owned());
                format!("panicked: {message}")
            } else {
                "cancelled".to_owned()
            };
            ServiceError::WatchEnded { watch: "a Kubernetes watch".to_owned(), reason }
        }
        None => ServiceError::WatchEnded { watch: "every Kubernetes watch".to_owned(), reason: "none runs".to_owned() },
    }
}

struct Session {
    config: KubeConfig,
    streams: Vec<StreamId>,
    world: Arc<Mutex<World>>,
    changed: Arc<tokio::sync::Notify>,
    state: State,
    /// With status write-back, the Lease that makes one replica the active one; without,
    /// this replica is the only one and always publishes.
    gate: Option<crate::status::ActiveLease>,
}

impl Session {
    fn active(&self) -> bool {
        self.gate.as_ref().is_none_or(|g| g.fresh())
    }

    /// Whether every watch has listed once, and how many fail now; reported as the
    /// `failing_watches` gauge.
    fn watch_health(&self) -> (BTreeSet<usize>, usize) {
        let (listed, failing) = {
            let w = self.world.lock().expect("the world lock");
            (w.listed.clone(), w.failing.len())
        };
        portico_kit::admin::gauge(
            "portico_watcher_failing_watches",
            "Kubernetes watches whose last attempt failed (the watcher is not ready while any does).",
            failing as f64,
        );
        (listed, failing)
    }

    /// Return once this replica is the active one; meanwhile it keeps its watches current
    /// (they run apart from the bus) and is ready while they work, so that it can take
    /// over at once.
    async fn stand_by(&mut self) {
        let mut said = false;
        while !self.active() {
            if !said {
                tracing::info!("standing by: another watcher replica holds the Lease and publishes");
                said = true;
            }
            let (listed, failing) = self.watch_health();
            portico_kit::admin::set_ready(listed.len() == self.streams.len() && failing == 0);
            if let Some(gate) = self.gate.as_mut() {
                gate.changed(Duration::from_secs(1)).await;
            }
        }
        if said {
            tracing::info!("this watcher replica is active now: publishing");
        }
    }
}

/// Run until `shutdown` completes, with `client` (from the in-cluster or kubeconfig
/// configuration, or a test's fake API server).
pub async fn run(
    config: KubeConfig,
    client: Client,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServiceError> {
    let gateway_api = match config.gateway_api {
        GatewayApiMode::Off => false,
        GatewayApiMode::On => true,
        GatewayApiMode::Auto => {
            let served = gateway_api_served(&client).await;
            if served {
                tracing::info!(
                    "the API server serves Gateway API v1 (BackendTLSPolicy): watching its kinds and ConfigMaps"
                );
            } else {
                tracing::warn!(
                    "the API server does not serve gateway.networking.k8s.io/v1 BackendTLSPolicy: Gateway API objects are not watched; install the Standard-channel CRDs (v1.4 or later) and restart the watcher, or pass --gateway-api off to say so"
                );
            }
            served
        }
    };
    let streams = streams(&config.namespaces, gateway_api);
    let world = Arc::new(Mutex::new(World::default()));
    let changed = Arc::new(tokio::sync::Notify::new());
    let mut tasks = start_watchers(&client, &streams, &world, &changed);
    tracing::info!(watches = streams.len(), namespaces = ?config.namespaces, "watcher (Kubernetes source) running");
    let bus = config.bus.clone();
    let writer = config.status.clone().map(|status| crate::status::StatusWriter::new(client.clone(), status));
    let gate = writer.as_ref().map(crate::status::StatusWriter::active);
    let signer = config.envoy_signer.clone().map(|signer| {
        let gate = gate.clone();
        let client = client.clone();
        async move { crate::envoy_identity::run_signer(client, signer, gate).await }
    });
    let mut session = Session { config, streams, world, changed, state: State::default(), gate };
    let shutdown = futures_util::FutureExt::shared(Box::pin(shutdown));
    let objects = portico_bus::nats::supervise(
        &bus,
        &[names::OBJECTS, names::SECRETS],
        &mut session,
        shutdown.clone(),
        publish_session,
    );
    let work = async {
        match writer {
            Some(mut writer) => {
                let statuses = portico_bus::nats::supervise(&bus, &[], &mut writer, shutdown, crate::status::session);
                let (a, b) = tokio::join!(objects, statuses);
                a?;
                b?;
            }
            None => objects.await?,
        }
        Ok::<(), ServiceError>(())
    };
    let signer = async {
        match signer {
            Some(signer) => signer.await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        result = work => result?,
        () = signer => unreachable!("the signer runs until dropped"),
        error = first_ended(&mut tasks) => {
            portico_kit::admin::set_ready(false);
            tracing::error!(error = %error, "a Kubernetes watch is gone");
            return Err(error);
        }
    }
    tracing::info!("watcher stopped");
    Ok(())
}

async fn publish_session(s: &mut Session, buckets: Buckets) -> Result<std::convert::Infallible, ServiceError> {
    loop {
        s.stand_by().await;
        publish_while_active(s, &buckets).await?;
        tracing::warn!("lost the watcher lease: standing by, no longer publishing");
    }
}

/// Publish the world, then every change, until this replica is no longer the active one.
/// It starts from what the bus holds (another replica may have published since), and
/// checks that it is active before every batch: a replica that stalled past its lease
/// publishes nothing more (what no Lease can fence is a batch already on its way).
async fn publish_while_active(s: &mut Session, buckets: &Buckets) -> Result<(), ServiceError> {
    s.state.published.clear();
    s.state.synced = false;
    existing_keys(buckets, &mut s.state).await?;
    let mut marked: BTreeSet<Kind> = BTreeSet::new();
    let mut seen_revision = None;
    loop {
        // Debounce: wait for quiet (holdoff), but not longer than max_delay.
        let first = tokio::time::Instant::now();
        loop {
            let quiet = tokio::time::sleep(s.config.holdoff);
            tokio::select! {
                () = s.changed.notified() => {
                    if first.elapsed() >= s.config.max_delay { break; }
                }
                () = quiet => break,
            }
        }
        if !s.active() {
            return Ok(());
        }
        let (listed, failing) = s.watch_health();
        // The world is encoded only when it changed: the active replica also wakes every
        // second to see that its lease is still fresh, and 10,000 objects are not encoded
        // for that.
        let changed = {
            let w = s.world.lock().expect("the world lock");
            (seen_revision != Some(w.revision)).then(|| {
                let desired: crate::service::Desired =
                    w.objects.iter().map(|(k, (o, _))| (k.clone(), crate::service::Encoded::new(o.clone()))).collect();
                (desired, w.revision)
            })
        };
        if let Some((desired, revision)) = changed {
            let changes = apply(buckets, &mut s.state, desired).await?;
            if changes > 0 {
                tracing::info!(changes, "changes published");
            }
            seen_revision = Some(revision);
        }
        // Markers for kinds whose every watcher has listed once.
        for kind in Kind::ALL {
            let ready =
                s.streams.iter().enumerate().filter(|(_, st)| st.kind == kind).all(|(id, _)| listed.contains(&id));
            if ready && marked.insert(kind) {
                // The secrets bucket holds Secrets and ConfigMaps: its marker waits for both.
                let other = if kind == Kind::Secret { Kind::ConfigMap } else { Kind::Secret };
                if matches!(kind, Kind::Secret | Kind::ConfigMap) && marked.contains(&other) {
                    put_marker(&buckets.secrets, names::SECRETS_SYNC_KEY).await?;
                }
                put_marker(&buckets.objects, &names::sync_key(kind)).await?;
                tracing::info!(kind = ?kind, "initial sync published");
            }
        }
        if !s.state.synced && marked.len() == Kind::ALL.len() {
            s.state.synced = true;
        }
        // Ready once every kind is listed, and while no watch fails: a watch that fails
        // (RBAC, a CRD removed) leaves its kind frozen on the bus.
        portico_kit::admin::set_ready(s.state.synced && failing == 0);
        if marked.len() == Kind::ALL.len() {
            let changed = s.changed.clone();
            match s.gate.as_mut() {
                Some(gate) => tokio::select! {
                    () = changed.notified() => {}
                    () = gate.changed(Duration::from_secs(1)) => {}
                },
                None => changed.notified().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_watch_task_that_panics_is_named_with_its_message() {
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(named("HttpProxy in all namespaces".to_owned(), std::future::pending::<()>()));
        tasks.spawn(named("Service in all namespaces".to_owned(), async { panic!("the world lock was poisoned") }));
        let error = first_ended(&mut tasks).await.to_string();
        assert!(error.contains("panicked: the world lock was poisoned"), "{error}");
        assert!(error.contains("restarted"), "{error}");
        // A task whose stream ends is named.
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(named("Secret in shop (type=Opaque)".to_owned(), async {}));
        let error = first_ended(&mut tasks).await.to_string();
        assert!(error.contains("Secret in shop (type=Opaque) ended"), "{error}");
    }
}
