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
//! - Watch errors restart the watch with kube-runtime's default backoff.

use crate::service::{apply, existing_keys, key_of, put_marker, Bucket, ServiceError, State};
use crate::{convert, crds};
use futures_util::StreamExt;
use k8s_openapi::api::{core::v1 as core, discovery::v1 as discovery};
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
}

/// One watcher: a kind, a namespace (or all) and a field selector.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct StreamId {
    kind: Kind,
    namespace: Option<String>,
    fields: Option<String>,
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
    /// Bumped on every change, so sessions know to publish.
    revision: u64,
}

impl World {
    /// Drop what watcher `id` listed under this object's namespace and name.
    fn forget(&mut self, id: usize, meta: &kube::api::ObjectMeta) {
        let (ns, name) = (meta.namespace.as_deref().unwrap_or_default(), meta.name.as_deref().unwrap_or_default());
        self.objects.retain(|_, (o, owner)| {
            !(*owner == id && o.meta().namespace.as_str() == ns && o.meta().name.as_str() == name)
        });
    }
}

fn streams(namespaces: &[String]) -> Vec<StreamId> {
    let scopes: Vec<Option<String>> =
        if namespaces.is_empty() { vec![None] } else { namespaces.iter().cloned().map(Some).collect() };
    let mut out = Vec::new();
    for kind in Kind::ALL {
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
                tracing::warn!(kind = ?stream.kind, namespace = ?stream.namespace, error = %e, "watch failed; retrying with backoff");
                continue;
            }
        };
        let mut w = world.lock().expect("the world lock");
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

/// Start a watcher per stream.
fn start_watchers(
    client: &Client,
    streams: &[StreamId],
    world: &Arc<Mutex<World>>,
    changed: &Arc<tokio::sync::Notify>,
) {
    for (id, stream) in streams.iter().enumerate() {
        let (world, changed, s) = (world.clone(), changed.clone(), stream.clone());
        let ns = &stream.namespace;
        match stream.kind {
            Kind::Service => {
                tokio::spawn(watch_kind(api::<core::Service>(client, ns), id, s, world, changed, |o| {
                    convert::service(o).map(Object::Service)
                }));
            }
            Kind::EndpointSlice => {
                tokio::spawn(watch_kind(api::<discovery::EndpointSlice>(client, ns), id, s, world, changed, |o| {
                    convert::endpoint_slice(o).map(Object::EndpointSlice)
                }));
            }
            Kind::Secret => {
                tokio::spawn(watch_kind(api::<core::Secret>(client, ns), id, s, world, changed, |o| {
                    convert::secret(o).map(Object::Secret)
                }));
            }
            Kind::HttpProxy => {
                tokio::spawn(watch_kind(api::<crds::HTTPProxy>(client, ns), id, s, world, changed, |o| {
                    convert::http_proxy(o).map(Object::HttpProxy)
                }));
            }
            Kind::TlsCertificateDelegation => {
                tokio::spawn(watch_kind(
                    api::<crds::TLSCertificateDelegation>(client, ns),
                    id,
                    s,
                    world,
                    changed,
                    |o| convert::delegation(o).map(Object::TlsCertificateDelegation),
                ));
            }
            Kind::VoyagerIngress => {
                tokio::spawn(watch_kind(api::<crds::VoyagerIngress>(client, ns), id, s, world, changed, |o| {
                    convert::voyager_ingress(o).map(Object::VoyagerIngress)
                }));
            }
        }
    }
}

struct Session {
    config: KubeConfig,
    streams: Vec<StreamId>,
    world: Arc<Mutex<World>>,
    changed: Arc<tokio::sync::Notify>,
    state: State,
}

/// Run until `shutdown` completes, with `client` (from the in-cluster or kubeconfig
/// configuration, or a test's fake API server).
pub async fn run(
    config: KubeConfig,
    client: Client,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServiceError> {
    let streams = streams(&config.namespaces);
    let world = Arc::new(Mutex::new(World::default()));
    let changed = Arc::new(tokio::sync::Notify::new());
    start_watchers(&client, &streams, &world, &changed);
    tracing::info!(watches = streams.len(), namespaces = ?config.namespaces, "watcher (Kubernetes source) running");
    let bus = config.bus.clone();
    let status = config.status.clone();
    let mut session = Session { config, streams, world, changed, state: State::default() };
    let shutdown = futures_util::FutureExt::shared(Box::pin(shutdown));
    let objects = portico_bus::nats::supervise(
        &bus,
        &[names::OBJECTS, names::SECRETS],
        &mut session,
        shutdown.clone(),
        publish_session,
    );
    match status {
        Some(status) => {
            let mut writer = crate::status::StatusWriter::new(client, status);
            let statuses = portico_bus::nats::supervise(&bus, &[], &mut writer, shutdown, crate::status::session);
            let (a, b) = tokio::join!(objects, statuses);
            a?;
            b?;
        }
        None => objects.await?,
    }
    tracing::info!("watcher stopped");
    Ok(())
}

async fn publish_session(s: &mut Session, buckets: Buckets) -> Result<std::convert::Infallible, ServiceError> {
    s.state.published.clear();
    s.state.synced = false;
    existing_keys(&buckets, &mut s.state).await?;
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
        let (desired, revision, listed) = {
            let w = s.world.lock().expect("the world lock");
            let desired: BTreeMap<(Bucket, String), Object> =
                w.objects.iter().map(|(k, (o, _))| (k.clone(), o.clone())).collect();
            (desired, w.revision, w.listed.clone())
        };
        if seen_revision != Some(revision) {
            let changes = apply(&buckets, &mut s.state, desired).await?;
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
                if kind == Kind::Secret {
                    put_marker(&buckets.secrets, names::SECRETS_SYNC_KEY).await?;
                }
                put_marker(&buckets.objects, &names::sync_key(kind)).await?;
                tracing::info!(kind = ?kind, "initial sync published");
            }
        }
        if !s.state.synced && marked.len() == Kind::ALL.len() {
            s.state.synced = true;
            portico_kit::admin::set_ready(true);
        }
        if marked.len() == Kind::ALL.len() {
            s.changed.notified().await;
        }
    }
}
