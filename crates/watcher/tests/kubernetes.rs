//! The Kubernetes source against a fake API server that speaks the real list/watch protocol
//! over HTTP (lists with resourceVersions, chunked watch streams, bookmarks, `410 Gone`),
//! so kube's real client and kube-runtime's watcher run unchanged, and a real nats-server.
//!
//! Checked: the initial lists reach the bus with every kind's sync marker; only Secrets of
//! the accepted types are asked for (by field selector) and published, to their own
//! bucket; watch events (add, modify, delete) follow; a `410 Gone` makes the watcher
//! relist, and changes it missed meanwhile are applied without losing or duplicating.

use futures_util::StreamExt;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame};
use portico_bus::nats::{connect, ensure_buckets, Buckets, ConnectConfig};
use portico_testkit::NatsServer;
use portico_watcher::kubernetes::{run, KubeConfig};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

const SERVICES: &str = "api/v1/services";
const SECRETS: &str = "api/v1/secrets";
const PROXIES: &str = "apis/projectcontour.io/v1/httpproxies";

/// The collections the watcher asks for, with each item's apiVersion and kind.
const COLLECTIONS: [(&str, &str, &str); 6] = [
    (SERVICES, "v1", "Service"),
    ("apis/discovery.k8s.io/v1/endpointslices", "discovery.k8s.io/v1", "EndpointSlice"),
    (SECRETS, "v1", "Secret"),
    (PROXIES, "projectcontour.io/v1", "HTTPProxy"),
    ("apis/projectcontour.io/v1/tlscertificatedelegations", "projectcontour.io/v1", "TLSCertificateDelegation"),
    ("apis/voyager.appscode.com/v1beta1/ingresses", "voyager.appscode.com/v1beta1", "Ingress"),
];

struct Watcher {
    collection: String,
    field_selector: Option<String>,
    label_selector: Option<String>,
    events: mpsc::UnboundedSender<Value>,
}

#[derive(Default)]
struct ApiState {
    resource_version: u64,
    /// collection → "ns/name" → object
    objects: BTreeMap<String, BTreeMap<String, Value>>,
    watchers: Vec<Watcher>,
    /// Every list request: (collection, query).
    lists: Vec<(String, String)>,
    /// Every status patch: (object path, body).
    patches: Vec<(String, Value)>,
    /// Leases by "ns/name".
    leases: BTreeMap<String, Value>,
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| percent_decoded(v))
    })
}

/// A query value with its `%XX` escapes decoded.
fn percent_decoded(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (
            bytes[i],
            bytes.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()),
        ) {
            (b'%', Some(decoded)) => {
                out.push(decoded);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `object` matches the selectors of a request: `type=<t>` fields, and
/// `<key>!=<value>` labels (the forms Portico sends), as the API server applies them.
fn selected(object: &Value, fields: &Option<String>, labels: &Option<String>) -> bool {
    let field_ok = match fields.as_deref().and_then(|s| s.strip_prefix("type=")) {
        Some(t) => object["type"] == t,
        None => true,
    };
    let label_ok = match labels.as_deref().and_then(|s| s.split_once("!=")) {
        Some((key, value)) => object["metadata"]["labels"][key] != value,
        None => true,
    };
    field_ok && label_ok
}

#[derive(Clone)]
struct FakeApi {
    state: Arc<Mutex<ApiState>>,
    url: String,
}

type Body = BoxBody<Bytes, Infallible>;

fn full(status: u16, value: &Value) -> hyper::Response<Body> {
    hyper::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(value.to_string())).boxed())
        .unwrap()
}

impl FakeApi {
    async fn start() -> FakeApi {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let api = FakeApi { state: Arc::new(Mutex::new(ApiState::default())), url };
        let server = api.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let server = server.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let server = server.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            Ok::<_, Infallible>(server.handle(parts, body))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        api
    }

    fn handle(&self, req: hyper::http::request::Parts, body: Bytes) -> hyper::Response<Body> {
        let path = req.uri.path().trim_start_matches('/').to_owned();
        let query = req.uri.query().unwrap_or_default().to_owned();
        if let Some(rest) = path.strip_prefix("apis/coordination.k8s.io/v1/namespaces/") {
            return self.lease(&req.method, rest, &body);
        }
        if req.method == hyper::Method::PATCH && path.ends_with("/status") {
            return self.patch_status(&path, &body);
        }
        if req.method == hyper::Method::GET && path.ends_with("/status") {
            return self.get_status(&path);
        }
        let Some((collection, api_version, kind)) = COLLECTIONS.iter().find(|(c, _, _)| *c == path) else {
            return full(
                404,
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound", "message": format!("{path} not found")}),
            );
        };
        let field_selector = query_param(&query, "fieldSelector");
        let label_selector = query_param(&query, "labelSelector");
        let mut state = self.state.lock().unwrap();
        if query_param(&query, "watch").as_deref() == Some("true") {
            let (tx, rx) = mpsc::unbounded_channel::<Value>();
            // A bookmark first, as servers do when asked (allowWatchBookmarks).
            let rv = state.resource_version.to_string();
            let _ = tx.send(json!({"type": "BOOKMARK", "object": {"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": rv}}}));
            state.watchers.push(Watcher {
                collection: collection.to_string(),
                field_selector,
                label_selector,
                events: tx,
            });
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                let event = rx.recv().await?;
                Some((Ok::<_, Infallible>(Frame::data(Bytes::from(format!("{event}\n")))), rx))
            });
            return hyper::Response::builder()
                .header("content-type", "application/json")
                .body(BodyExt::boxed(StreamBody::new(stream)))
                .unwrap();
        }
        state.lists.push((collection.to_string(), query.clone()));
        let items: Vec<Value> = state
            .objects
            .get(*collection)
            .map(|m| m.values().filter(|o| selected(o, &field_selector, &label_selector)).cloned().collect())
            .unwrap_or_default();
        let rv = state.resource_version.to_string();
        full(
            200,
            &json!({"apiVersion": api_version, "kind": format!("{kind}List"), "metadata": {"resourceVersion": rv}, "items": items}),
        )
    }

    /// PATCH .../namespaces/<ns>/httpproxies/<name>/status with a merge patch.
    fn patch_status(&self, path: &str, body: &[u8]) -> hyper::Response<Body> {
        let patch: Value = serde_json::from_slice(body).unwrap();
        let parts: Vec<&str> = path.split('/').collect();
        let (ns, plural, name) = (parts[parts.len() - 4], parts[parts.len() - 3], parts[parts.len() - 2]);
        let collection = COLLECTIONS.iter().map(|c| c.0).find(|c| c.ends_with(&format!("/{plural}"))).unwrap();
        let mut state = self.state.lock().unwrap();
        state.patches.push((format!("{ns}/{name}"), patch.clone()));
        state.resource_version += 1;
        let rv = state.resource_version.to_string();
        match state.objects.get_mut(collection).and_then(|m| m.get_mut(&format!("{ns}/{name}"))) {
            Some(object) => {
                object["status"] = patch["status"].clone();
                object["metadata"]["resourceVersion"] = json!(rv);
                full(200, &object.clone())
            }
            None => full(
                404,
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound", "message": "not found"}),
            ),
        }
    }

    /// GET .../namespaces/<ns>/<plural>/<name>/status: the object.
    fn get_status(&self, path: &str) -> hyper::Response<Body> {
        let parts: Vec<&str> = path.split('/').collect();
        let (ns, plural, name) = (parts[parts.len() - 4], parts[parts.len() - 3], parts[parts.len() - 2]);
        let collection = COLLECTIONS.iter().map(|c| c.0).find(|c| c.ends_with(&format!("/{plural}"))).unwrap();
        let state = self.state.lock().unwrap();
        match state.objects.get(collection).and_then(|m| m.get(&format!("{ns}/{name}"))) {
            Some(object) => full(200, object),
            None => full(
                404,
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound", "message": "not found"}),
            ),
        }
    }

    /// Leases: GET, POST (create) and PUT (replace, compare-and-set on resourceVersion).
    fn lease(&self, method: &hyper::Method, rest: &str, body: &[u8]) -> hyper::Response<Body> {
        let mut state = self.state.lock().unwrap();
        let parts: Vec<&str> = rest.split('/').collect(); // <ns>/leases[/<name>]
        let ns = parts[0];
        let status = |code: u16, reason: &str| {
            full(
                code,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "code": code, "reason": reason, "message": reason}),
            )
        };
        match (method.as_str(), parts.get(2)) {
            ("GET", Some(name)) => match state.leases.get(&format!("{ns}/{name}")) {
                Some(lease) => full(200, lease),
                None => status(404, "NotFound"),
            },
            ("POST", None) => {
                let mut lease: Value = serde_json::from_slice(body).unwrap();
                let key = format!("{ns}/{}", lease["metadata"]["name"].as_str().unwrap());
                if state.leases.contains_key(&key) {
                    return status(409, "AlreadyExists");
                }
                state.resource_version += 1;
                lease["metadata"]["resourceVersion"] = json!(state.resource_version.to_string());
                lease["metadata"]["namespace"] = json!(ns);
                lease["apiVersion"] = json!("coordination.k8s.io/v1");
                lease["kind"] = json!("Lease");
                state.leases.insert(key, lease.clone());
                full(201, &lease)
            }
            ("PUT", Some(name)) => {
                let mut lease: Value = serde_json::from_slice(body).unwrap();
                let key = format!("{ns}/{name}");
                let current = state.leases.get(&key).map(|l| l["metadata"]["resourceVersion"].clone());
                if current != Some(lease["metadata"]["resourceVersion"].clone()) {
                    return status(409, "Conflict");
                }
                state.resource_version += 1;
                lease["metadata"]["resourceVersion"] = json!(state.resource_version.to_string());
                state.leases.insert(key, lease.clone());
                full(200, &lease)
            }
            _ => status(405, "MethodNotAllowed"),
        }
    }

    fn patches(&self, key: &str) -> Vec<Value> {
        self.state.lock().unwrap().patches.iter().filter(|(k, _)| k == key).map(|(_, b)| b.clone()).collect()
    }

    fn key(object: &Value) -> String {
        format!(
            "{}/{}",
            object["metadata"]["namespace"].as_str().unwrap(),
            object["metadata"]["name"].as_str().unwrap()
        )
    }

    /// Store an object; `notify` sends the watch event (else the change is missed, as
    /// during a watch outage).
    fn put(&self, collection: &str, mut object: Value, notify: bool) {
        let mut state = self.state.lock().unwrap();
        state.resource_version += 1;
        object["metadata"]["resourceVersion"] = json!(state.resource_version.to_string());
        let key = FakeApi::key(&object);
        let existed = state.objects.entry(collection.to_owned()).or_default().insert(key, object.clone()).is_some();
        if notify {
            let kind = if existed { "MODIFIED" } else { "ADDED" };
            state.send(collection, &json!({"type": kind, "object": object}));
        }
    }

    fn delete(&self, collection: &str, key: &str, notify: bool) {
        let mut state = self.state.lock().unwrap();
        state.resource_version += 1;
        let removed = state.objects.get_mut(collection).and_then(|m| m.remove(key));
        if let (Some(mut object), true) = (removed, notify) {
            object["metadata"]["resourceVersion"] = json!(state.resource_version.to_string());
            state.send(collection, &json!({"type": "DELETED", "object": object}));
        }
    }

    /// End every watch of a collection with `410 Gone`, as an API server does when the
    /// watcher's resourceVersion is too old.
    fn expire(&self, collection: &str) {
        let mut state = self.state.lock().unwrap();
        let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": "too old resource version", "reason": "Expired", "code": 410}});
        state.send(collection, &gone);
        state.watchers.retain(|w| w.collection != collection);
    }

    fn watching(&self, collection: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .watchers
            .iter()
            .filter(|w| w.collection == collection && !w.events.is_closed())
            .count()
    }

    fn lists(&self, collection: &str) -> Vec<String> {
        self.state.lock().unwrap().lists.iter().filter(|(c, _)| c == collection).map(|(_, q)| q.clone()).collect()
    }
}

impl ApiState {
    fn send(&mut self, collection: &str, event: &Value) {
        for w in self.watchers.iter().filter(|w| w.collection == collection) {
            if event["type"] == "ERROR" || selected(&event["object"], &w.field_selector, &w.label_selector) {
                let _ = w.events.send(event.clone());
            }
        }
    }
}

fn service(name: &str, port: u16) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "shop"}, "spec": {"ports": [{"name": "https", "port": port}]}})
}

fn secret(name: &str, kind: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "shop"}, "type": kind, "data": {"ca.crt": "eA=="}})
}

fn proxy(name: &str) -> Value {
    json!({"apiVersion": "projectcontour.io/v1", "kind": "HTTPProxy", "metadata": {"name": name, "namespace": "shop", "generation": 3},
           "spec": {"virtualhost": {"fqdn": "shop.example.com"}, "routes": [{"services": [{"name": "web", "port": 443}]}]}})
}

async fn keys(store: &async_nats::jetstream::kv::Store) -> Vec<String> {
    let mut keys: Vec<String> = store.keys().await.unwrap().map(|k| k.unwrap()).collect().await;
    keys.sort();
    keys
}

/// Wait until the bucket's keys are `want`.
async fn until_keys(store: &async_nats::jetstream::kv::Store, want: &[&str]) {
    let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    for _ in 0..200 {
        if keys(store).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(keys(store).await, want, "the bucket {} never held exactly these keys", store.name);
}

async fn until<F: Fn() -> bool>(what: &str, f: F) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{what} never happened");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_then_watch_events_reach_the_bus_and_a_410_relists_without_losing_or_duplicating() {
    let nats = NatsServer::start();
    let bus = ConnectConfig { url: nats.url(), name: "test".into(), ..Default::default() };
    let api = FakeApi::start().await;
    api.put(SERVICES, service("web", 443), false);
    api.put(SECRETS, secret("ca", "Opaque"), false);
    api.put(SECRETS, secret("tls", "kubernetes.io/tls"), false);
    api.put(SECRETS, secret("token", "kubernetes.io/service-account-token"), false);
    // Portico's own credentials (the Job's Secrets, with private keys): never relayed.
    let mut own = secret("portico-ads-tls", "Opaque");
    own["metadata"]["labels"] = json!({"portico.dev/internal": "true"});
    api.put(SECRETS, own, false);

    let client = kube::Client::try_from(kube::Config::new(api.url.parse().unwrap())).unwrap();
    let config = KubeConfig {
        bus: bus.clone(),
        namespaces: Vec::new(),
        holdoff: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
        status: None,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run(config, client, async move {
        let _ = stopped.await;
    }));

    let buckets: Buckets = ensure_buckets(&async_nats::jetstream::new(connect(&bus).await.unwrap())).await.unwrap();
    let synced: Vec<&str> = vec![
        "service.shop.web",
        "sync.endpointslice",
        "sync.httpproxy",
        "sync.secret",
        "sync.service",
        "sync.tlscertificatedelegation",
        "sync.voyageringress",
    ];
    until_keys(&buckets.objects, &synced).await;
    // Secrets of the two accepted types only, in their own bucket, with its marker.
    until_keys(&buckets.secrets, &["shop.ca", "shop.tls", "sync"]).await;
    let secret_lists = api.lists(SECRETS);
    assert!(secret_lists.iter().any(|q| q.contains("fieldSelector=type%3DOpaque")), "{secret_lists:?}");
    assert!(secret_lists.iter().any(|q| q.contains("fieldSelector=type%3Dkubernetes.io%2Ftls")), "{secret_lists:?}");
    assert!(
        secret_lists.iter().all(|q| q.contains("labelSelector=portico.dev%2Finternal%21%3Dtrue")),
        "Portico's own Secrets are left out: {secret_lists:?}"
    );
    // Listed before the sync marker (the barrier above), and not there.
    assert_eq!(buckets.secrets.get("shop.portico-ads-tls").await.unwrap(), None);

    // Watch events: add, modify, delete.
    until("the HTTPProxy watch", || api.watching(PROXIES) > 0).await;
    api.put(PROXIES, proxy("shop"), true);
    let mut with_proxy = synced.clone();
    with_proxy.insert(0, "httpproxy.shop.shop");
    until_keys(&buckets.objects, &with_proxy).await;
    until("the Service watch", || api.watching(SERVICES) > 0).await;
    api.put(SERVICES, service("web", 8443), true);
    for _ in 0..200 {
        let entry = buckets.objects.get("service.shop.web").await.unwrap().unwrap();
        let (object, _) = portico_bus::open::<portico_model::Object>(&entry).unwrap();
        if let portico_model::Object::Service(s) = object {
            if s.ports[0].port == 8443 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    api.put(SERVICES, service("api", 80), true);
    api.delete(SERVICES, "shop/api", true);
    api.put(SECRETS, secret("token2", "kubernetes.io/service-account-token"), true);

    // 410 Gone on the Service watch; meanwhile "web" is deleted and "api2" created, and
    // the watcher hears of neither: only the relist can tell it.
    let lists_before = api.lists(SERVICES).len();
    api.delete(SERVICES, "shop/web", false);
    api.put(SERVICES, service("api2", 80), false);
    api.expire(SERVICES);
    until("a relist of Services after 410 Gone", || api.lists(SERVICES).len() > lists_before).await;
    let mut relisted = with_proxy.clone();
    relisted.retain(|k| *k != "service.shop.web");
    relisted.insert(1, "service.shop.api2");
    until_keys(&buckets.objects, &relisted).await;
    // Other kinds untouched, no duplicates, and the service-account tokens never published.
    assert_eq!(keys(&buckets.objects).await, relisted);
    assert_eq!(keys(&buckets.secrets).await, ["shop.ca", "shop.tls", "sync"]);

    // After the relist the watch resumes: a later event still arrives.
    until("the Service watch again", || api.watching(SERVICES) > 0).await;
    api.put(SERVICES, service("late", 80), true);
    let mut last = relisted.clone();
    last.insert(2, "service.shop.late");
    until_keys(&buckets.objects, &last).await;

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("stops").unwrap().unwrap();
}

/// The watcher's Kubernetes source (with status write-back), the secrets service and the
/// resolver, in process on one bus.
struct Pipeline {
    stop: tokio::sync::broadcast::Sender<()>,
    watcher: tokio::task::JoinHandle<Result<(), portico_watcher::service::ServiceError>>,
    secrets: tokio::task::JoinHandle<Result<(), portico_secrets::service::ServiceError>>,
    resolver: tokio::task::JoinHandle<Result<(), portico_resolver::service::ServiceError>>,
}

impl Pipeline {
    fn start(bus: &ConnectConfig, client: kube::Client, status: portico_watcher::status::StatusConfig) -> Pipeline {
        let config = KubeConfig {
            bus: bus.clone(),
            namespaces: Vec::new(),
            holdoff: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
            status: Some(status),
        };
        let (stop, _) = tokio::sync::broadcast::channel::<()>(1);
        let until_stopped = |mut rx: tokio::sync::broadcast::Receiver<()>| async move {
            let _ = rx.recv().await;
        };
        let watcher = tokio::spawn(run(config, client, until_stopped(stop.subscribe())));
        let secrets = tokio::spawn(portico_secrets::service::run(
            portico_secrets::service::ServiceConfig { bus: bus.clone(), revalidate_every: Duration::from_secs(3600) },
            until_stopped(stop.subscribe()),
        ));
        let mut resolver_config = portico_resolver::service::ServiceConfig::new(
            bus.clone(),
            portico_resolver::Config::default(),
            "resolver-test".into(),
        );
        resolver_config.holdoff = Duration::from_millis(20);
        let resolver = tokio::spawn(portico_resolver::service::run(resolver_config, until_stopped(stop.subscribe())));
        Pipeline { stop, watcher, secrets, resolver }
    }

    async fn stop(self) {
        self.stop.send(()).unwrap();
        let limit = Duration::from_secs(5);
        tokio::time::timeout(limit, self.watcher).await.expect("stops").unwrap().unwrap();
        tokio::time::timeout(limit, self.secrets).await.expect("stops").unwrap().unwrap();
        tokio::time::timeout(limit, self.resolver).await.expect("stops").unwrap().unwrap();
    }
}

/// A TLS Service and an HTTPProxy validating it against the CA secret `shop/ca`, which
/// does not exist yet.
fn shop_with_missing_ca(api: &FakeApi) {
    let mut web = service("web", 443);
    web["metadata"]["annotations"] = json!({"projectcontour.io/upstream-protocol.tls": "443"});
    api.put(SERVICES, web, false);
    let mut shop = proxy("shop");
    shop["spec"]["routes"][0]["services"][0]["validation"] = json!({"caSecret": "ca", "subjectName": "web.shop.svc"});
    api.put(PROXIES, shop, false);
}

fn ca_pem() -> (String, String) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, "test CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_are_written_back_by_the_lease_holder_only_when_they_change() {
    let nats = NatsServer::start();
    let bus = ConnectConfig { url: nats.url(), name: "test".into(), ..Default::default() };
    let api = FakeApi::start().await;
    shop_with_missing_ca(&api);

    let client = kube::Client::try_from(kube::Config::new(api.url.parse().unwrap())).unwrap();
    let status = portico_watcher::status::StatusConfig {
        lease_namespace: "portico".into(),
        lease_name: "portico-status-writer".into(),
        identity: "watcher-a".into(),
        lease_duration: Duration::from_secs(3),
        max_per_second: 50,
    };
    let pipeline = Pipeline::start(&bus, client, status);

    // The CA secret is missing: invalid, with the seed's message.
    let mut patches = Vec::new();
    for _ in 0..400 {
        patches = api.patches("shop/shop");
        if !patches.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(patches.len(), 1, "{patches:?}");
    let first = &patches[0]["status"];
    assert_eq!(first["currentStatus"], "invalid");
    assert_eq!(
        first["description"],
        "route \"/\": service \"web\": upstreamValidation requested but secret not found or misconfigured"
    );
    assert_eq!(first["conditions"][0]["type"], "Valid");
    assert_eq!(first["conditions"][0]["status"], "False");
    let lease = api.state.lock().unwrap().leases.get("portico/portico-status-writer").cloned().expect("a Lease");
    assert_eq!(lease["spec"]["holderIdentity"], "watcher-a");

    // The secret appears: valid, patched once more.
    let (pem, _) = ca_pem();
    let mut secret = secret("ca", "Opaque");
    secret.as_object_mut().unwrap().remove("data");
    secret["stringData"] = json!({"ca.crt": pem});
    until("the Secret watch", || api.watching(SECRETS) > 0).await;
    api.put(SECRETS, secret, true);
    for _ in 0..400 {
        if api.patches("shop/shop").len() > 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let patches = api.patches("shop/shop");
    assert_eq!(patches.len(), 2, "{patches:?}");
    assert_eq!(patches[1]["status"]["currentStatus"], "valid");
    assert_eq!(patches[1]["status"]["description"], "Valid HTTPProxy");

    // Every status passes Contour's published schema (which requires lastTransitionTime),
    // and carries the generation of the object it describes.
    let objects: Vec<Value> = patches
        .iter()
        .map(|p| {
            json!({"apiVersion": "projectcontour.io/v1", "kind": "HTTPProxy",
                   "metadata": {"name": "shop", "namespace": "shop"}, "spec": {}, "status": p["status"]})
        })
        .collect();
    contour_schema_accepts(&objects);
    for p in &patches {
        let condition = &p["status"]["conditions"][0];
        assert!(condition["lastTransitionTime"].is_string(), "{condition}");
        assert_eq!(condition["observedGeneration"], 3, "{condition}");
    }
    let without = json!([{"apiVersion": "projectcontour.io/v1", "kind": "HTTPProxy", "metadata": {"name": "x", "namespace": "shop"},
        "spec": {}, "status": {"currentStatus": "valid", "description": "d",
        "conditions": [{"type": "Valid", "status": "True", "reason": "Valid", "message": "m"}]}}]);
    assert!(
        !contour_validate(without.as_array().unwrap()).0,
        "the check is not vacuous: Contour's schema refuses a condition without lastTransitionTime"
    );

    // A change that leaves the status as it is (another Service) patches nothing. The
    // barrier: an HTTPProxy added after it, on another host, whose status is written.
    until("the Service watch", || api.watching(SERVICES) > 0).await;
    api.put(SERVICES, service("other", 80), true);
    let mut later = proxy("later");
    later["spec"]["virtualhost"]["fqdn"] = json!("later.example.com");
    api.put(PROXIES, later, true);
    until("the later HTTPProxy's status", || !api.patches("shop/later").is_empty()).await;
    assert_eq!(api.patches("shop/shop").len(), 2, "an unchanged status is not written again");

    pipeline.stop().await;
}

/// Validate objects with Contour's published schema (scripts/contour-validate.mjs on the
/// npm package that scripts/contour-models.sh brings): (all valid, what node said).
fn contour_validate(objects: &[Value]) -> (bool, String) {
    use std::io::Write;
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let models = std::process::Command::new("bash").arg(repo.join("scripts/contour-models.sh")).output().unwrap();
    assert!(models.status.success(), "scripts/contour-models.sh: {}", String::from_utf8_lossy(&models.stderr));
    let dir = String::from_utf8(models.stdout).unwrap().trim().to_owned();
    let mut node = std::process::Command::new("node")
        .arg(repo.join("scripts/contour-validate.mjs"))
        .arg(&dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("node (scripts/setup.sh installs npm, which brings it)");
    node.stdin.take().unwrap().write_all(serde_json::to_string(objects).unwrap().as_bytes()).unwrap();
    let out = node.wait_with_output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

fn contour_schema_accepts(objects: &[Value]) {
    let (ok, said) = contour_validate(objects);
    assert!(ok, "Contour's schema refuses a status Portico writes:\n{said}");
}

impl FakeApi {
    /// Another replica holds the status writers' Lease: renew it now (a new resourceVersion).
    fn renew_foreign_lease(&self, holder: &str) {
        let mut state = self.state.lock().unwrap();
        state.resource_version += 1;
        let lease = json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "portico-status-writer", "namespace": "portico", "resourceVersion": state.resource_version.to_string()},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 2}
        });
        state.leases.insert("portico/portico-status-writer".into(), lease);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_lease_holder_writes_and_a_writer_that_loses_the_lease_stops() {
    let nats = NatsServer::start();
    let bus = ConnectConfig { url: nats.url(), name: "test".into(), ..Default::default() };
    let api = FakeApi::start().await;
    shop_with_missing_ca(&api);
    // Another replica holds the Lease and keeps renewing it while `other` is set.
    api.renew_foreign_lease("watcher-b");
    let other = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let renewer = {
        let (api, other) = (api.clone(), other.clone());
        tokio::spawn(async move {
            loop {
                if other.load(std::sync::atomic::Ordering::SeqCst) {
                    api.renew_foreign_lease("watcher-b");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    let client = kube::Client::try_from(kube::Config::new(api.url.parse().unwrap())).unwrap();
    let status = portico_watcher::status::StatusConfig {
        lease_namespace: "portico".into(),
        lease_name: "portico-status-writer".into(),
        identity: "watcher-a".into(),
        lease_duration: Duration::from_secs(2),
        max_per_second: 50,
    };
    let pipeline = Pipeline::start(&bus, client, status);

    // While watcher-b renews, watcher-a writes nothing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(api.patches("shop/shop").is_empty(), "a standby wrote a status");

    // watcher-b stops renewing: after the lease duration watcher-a takes over and writes.
    other.store(false, std::sync::atomic::Ordering::SeqCst);
    until("watcher-a to take over and write", || api.patches("shop/shop").len() == 1).await;
    let lease = api.state.lock().unwrap().leases["portico/portico-status-writer"].clone();
    assert_eq!(lease["spec"]["holderIdentity"], "watcher-a");

    // watcher-b wins the lease back; once watcher-a has seen that, a status change is
    // not written by it.
    other.store(true, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (pem, _) = ca_pem();
    let mut secret = secret("ca", "Opaque");
    secret.as_object_mut().unwrap().remove("data");
    secret["stringData"] = json!({"ca.crt": pem});
    until("the Secret watch", || api.watching(SECRETS) > 0).await;
    api.put(SECRETS, secret, true);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(api.patches("shop/shop").len(), 1, "a writer that lost the lease wrote a status");

    renewer.abort();
    pipeline.stop().await;
}
