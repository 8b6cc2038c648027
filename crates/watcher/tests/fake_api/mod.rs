//! The fake Kubernetes API server the watcher's tests share: it speaks the real list/watch
//! protocol over HTTP (lists with resourceVersions, chunked watch streams, bookmarks,
//! `410 Gone`, status patches, Leases), so kube's real client and kube-runtime's watcher
//! run unchanged. Each test file uses a part of it.
#![allow(dead_code)]

use futures_util::StreamExt;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

pub const SERVICES: &str = "api/v1/services";
pub const SECRETS: &str = "api/v1/secrets";
pub const PROXIES: &str = "apis/projectcontour.io/v1/httpproxies";
pub const INGRESSES: &str = "apis/networking.k8s.io/v1/ingresses";
pub const INGRESS_CLASSES: &str = "apis/networking.k8s.io/v1/ingressclasses";

pub const CONFIG_MAPS: &str = "api/v1/configmaps";
pub const GATEWAY_CLASSES: &str = "apis/gateway.networking.k8s.io/v1/gatewayclasses";
pub const GATEWAYS: &str = "apis/gateway.networking.k8s.io/v1/gateways";
pub const HTTP_ROUTES: &str = "apis/gateway.networking.k8s.io/v1/httproutes";
pub const REFERENCE_GRANTS: &str = "apis/gateway.networking.k8s.io/v1beta1/referencegrants";
pub const BACKEND_TLS_POLICIES: &str = "apis/gateway.networking.k8s.io/v1/backendtlspolicies";

/// The collections the watcher asks for, with each item's apiVersion and kind.
pub const COLLECTIONS: [(&str, &str, &str); 14] = [
    (SERVICES, "v1", "Service"),
    ("apis/discovery.k8s.io/v1/endpointslices", "discovery.k8s.io/v1", "EndpointSlice"),
    (SECRETS, "v1", "Secret"),
    (PROXIES, "projectcontour.io/v1", "HTTPProxy"),
    ("apis/projectcontour.io/v1/tlscertificatedelegations", "projectcontour.io/v1", "TLSCertificateDelegation"),
    ("apis/voyager.appscode.com/v1beta1/ingresses", "voyager.appscode.com/v1beta1", "Ingress"),
    (INGRESSES, "networking.k8s.io/v1", "Ingress"),
    (INGRESS_CLASSES, "networking.k8s.io/v1", "IngressClass"),
    (CONFIG_MAPS, "v1", "ConfigMap"),
    (GATEWAY_CLASSES, "gateway.networking.k8s.io/v1", "GatewayClass"),
    (GATEWAYS, "gateway.networking.k8s.io/v1", "Gateway"),
    (HTTP_ROUTES, "gateway.networking.k8s.io/v1", "HTTPRoute"),
    (REFERENCE_GRANTS, "gateway.networking.k8s.io/v1beta1", "ReferenceGrant"),
    (BACKEND_TLS_POLICIES, "gateway.networking.k8s.io/v1", "BackendTLSPolicy"),
];

/// The collection, namespace and name of `.../namespaces/<ns>/<plural>/<name>/status`, or
/// of a cluster-scoped `.../<plural>/<name>/status` (namespace "").
fn status_target(path: &str) -> (&'static str, String, String) {
    let parts: Vec<&str> = path.split('/').collect();
    let (plural, name) = (parts[parts.len() - 3], parts[parts.len() - 2]);
    let (group, ns) = match path.split_once("/namespaces/") {
        // The group and version of the path tell Voyager's ingresses from Kubernetes'.
        Some((group, rest)) => (group.to_owned(), rest.split('/').next().unwrap_or_default().to_owned()),
        None => (parts[..parts.len() - 3].join("/"), String::new()),
    };
    let collection = COLLECTIONS.iter().map(|c| c.0).find(|c| *c == format!("{group}/{plural}")).unwrap();
    (collection, ns, name.to_owned())
}

pub struct Watcher {
    pub collection: String,
    pub field_selector: Option<String>,
    pub label_selector: Option<String>,
    pub events: mpsc::UnboundedSender<Value>,
}

#[derive(Default)]
pub struct ApiState {
    pub resource_version: u64,
    /// collection → "ns/name" → object
    pub objects: BTreeMap<String, BTreeMap<String, Value>>,
    pub watchers: Vec<Watcher>,
    /// Every list request: (collection, query).
    pub lists: Vec<(String, String)>,
    /// Every status patch: (object path, body).
    pub patches: Vec<(String, Value)>,
    /// Leases by "ns/name".
    pub leases: BTreeMap<String, Value>,
    /// Every Lease request: method, the holder it named (sent, or read back), answer code.
    pub lease_log: Vec<(String, Option<String>, u16)>,
    /// Whether discovery says the Gateway API v1 is served (its CRDs installed).
    pub gateway_api_served: bool,
    /// Collections whose lists and watches are refused (403), as RBAC would.
    pub forbidden: std::collections::BTreeSet<String>,
    /// CertificateSigningRequests by name.
    pub csrs: BTreeMap<String, Value>,
    /// Every events.k8s.io/v1 Event created or patched: (method, the Event).
    pub events: Vec<(String, Value)>,
    /// Who makes the next CertificateSigningRequest, as the API server records it from the
    /// requester's token: the username and the pod name of a bound token.
    pub requester: (String, Vec<String>),
}

pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| percent_decoded(v))
    })
}

/// A query value with its `%XX` escapes decoded.
pub fn percent_decoded(value: &str) -> String {
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
pub fn selected(object: &Value, fields: &Option<String>, labels: &Option<String>) -> bool {
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
pub struct FakeApi {
    pub state: Arc<Mutex<ApiState>>,
    pub url: String,
}

pub type Body = BoxBody<Bytes, Infallible>;

pub fn not_found() -> hyper::Response<Body> {
    full(
        404,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound", "message": "not found"}),
    )
}

pub fn full(status: u16, value: &Value) -> hyper::Response<Body> {
    hyper::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(value.to_string())).boxed())
        .unwrap()
}

impl FakeApi {
    pub async fn start() -> FakeApi {
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

    pub fn handle(&self, req: hyper::http::request::Parts, body: Bytes) -> hyper::Response<Body> {
        let path = req.uri.path().trim_start_matches('/').to_owned();
        let query = req.uri.query().unwrap_or_default().to_owned();
        if path == "apis/gateway.networking.k8s.io/v1" {
            // Discovery: served when the test installed the Gateway API's CRDs.
            if !self.state.lock().unwrap().gateway_api_served {
                return not_found();
            }
            let resources: Vec<Value> = COLLECTIONS
                .iter()
                .filter_map(|(c, _, kind)| c.strip_prefix("apis/gateway.networking.k8s.io/v1/").map(|plural| (plural, kind)))
                .map(|(plural, kind)| json!({"name": plural, "singularName": "", "namespaced": *kind != "GatewayClass", "kind": kind, "verbs": ["list", "watch"]}))
                .collect();
            return full(
                200,
                &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "gateway.networking.k8s.io/v1", "resources": resources}),
            );
        }
        if let Some(rest) = path.strip_prefix("apis/coordination.k8s.io/v1/namespaces/") {
            return self.lease(&req.method, rest, &body);
        }
        if let Some(rest) = path.strip_prefix("apis/certificates.k8s.io/v1/certificatesigningrequests") {
            return self.csr(&req.method, rest.trim_start_matches('/'), &query, &body);
        }
        if let Some(rest) = path.strip_prefix("api/v1/namespaces/") {
            // GET of one Secret: .../<ns>/secrets/<name>
            if let [ns, "secrets", name] = rest.split('/').collect::<Vec<_>>().as_slice() {
                let state = self.state.lock().unwrap();
                return match state.objects.get(SECRETS).and_then(|m| m.get(&format!("{ns}/{name}"))) {
                    Some(secret) => full(200, secret),
                    None => not_found(),
                };
            }
        }
        if let Some(rest) = path.strip_prefix("apis/events.k8s.io/v1/namespaces/") {
            // POST <ns>/events, PATCH <ns>/events/<name> (kube's Recorder).
            let event: Value = serde_json::from_slice(&body).unwrap_or_default();
            let mut state = self.state.lock().unwrap();
            state.events.push((req.method.to_string(), event.clone()));
            let _ = rest;
            return full(if req.method == hyper::Method::POST { 201 } else { 200 }, &event);
        }
        if let Some(rest) = path.strip_prefix("apis/networking.k8s.io/v1/namespaces/") {
            // GET of one Ingress: <ns>/ingresses/<name>
            if let (&hyper::Method::GET, [ns, "ingresses", name]) =
                (&req.method, rest.split('/').collect::<Vec<_>>().as_slice())
            {
                let state = self.state.lock().unwrap();
                return match state.objects.get(INGRESSES).and_then(|m| m.get(&format!("{ns}/{name}"))) {
                    Some(ingress) => full(200, ingress),
                    None => not_found(),
                };
            }
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
        if state.forbidden.contains(*collection) {
            return full(
                403,
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 403, "reason": "Forbidden", "message": format!("{kind} is forbidden: cannot list or watch {collection}")}),
            );
        }
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
    pub fn patch_status(&self, path: &str, body: &[u8]) -> hyper::Response<Body> {
        let patch: Value = serde_json::from_slice(body).unwrap();
        let (collection, ns, name) = status_target(path);
        let mut state = self.state.lock().unwrap();
        // A patch naming a resourceVersion applies only to that version (optimistic
        // concurrency), as the API server does.
        let current = state.objects.get(collection).and_then(|m| m.get(&format!("{ns}/{name}")));
        if let (Some(wanted), Some(object)) = (patch["metadata"]["resourceVersion"].as_str(), current) {
            if object["metadata"]["resourceVersion"].as_str() != Some(wanted) {
                return full(
                    409,
                    &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 409, "reason": "Conflict", "message": "the object has been modified"}),
                );
            }
        }
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

    /// CertificateSigningRequests: create (stamped with `requester`, as the API server does),
    /// list (by signerName), get, and merge patches of `approval` and `status`.
    pub fn csr(&self, method: &hyper::Method, rest: &str, query: &str, body: &[u8]) -> hyper::Response<Body> {
        let mut state = self.state.lock().unwrap();
        state.resource_version += 1;
        let rv = state.resource_version.to_string();
        let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
        match (method.as_str(), parts.as_slice()) {
            ("POST", []) => {
                let mut csr: Value = serde_json::from_slice(body).unwrap();
                let name = csr["metadata"]["name"].as_str().unwrap().to_owned();
                let (username, pods) = state.requester.clone();
                csr["spec"]["username"] = json!(username);
                csr["spec"]["extra"] = json!({"authentication.kubernetes.io/pod-name": pods});
                csr["metadata"]["resourceVersion"] = json!(rv);
                csr["apiVersion"] = json!("certificates.k8s.io/v1");
                csr["kind"] = json!("CertificateSigningRequest");
                state.csrs.insert(name, csr.clone());
                full(201, &csr)
            }
            ("GET", []) => {
                let signer = query_param(query, "fieldSelector")
                    .and_then(|f| f.strip_prefix("spec.signerName=").map(str::to_owned));
                let items: Vec<Value> = state
                    .csrs
                    .values()
                    .filter(|c| signer.as_ref().is_none_or(|s| c["spec"]["signerName"] == s.as_str()))
                    .cloned()
                    .collect();
                full(
                    200,
                    &json!({"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequestList", "metadata": {"resourceVersion": rv}, "items": items}),
                )
            }
            ("GET", [name]) => match state.csrs.get(*name) {
                Some(csr) => full(200, csr),
                None => not_found(),
            },
            ("PATCH", [name, "approval" | "status"]) => {
                let patch: Value = serde_json::from_slice(body).unwrap();
                let Some(csr) = state.csrs.get_mut(*name) else { return not_found() };
                if !csr["status"].is_object() {
                    csr["status"] = json!({});
                }
                for (key, value) in patch["status"].as_object().cloned().unwrap_or_default() {
                    csr["status"][key] = value;
                }
                csr["metadata"]["resourceVersion"] = json!(rv);
                full(200, &csr.clone())
            }
            _ => not_found(),
        }
    }

    /// GET .../namespaces/<ns>/<plural>/<name>/status: the object.
    pub fn get_status(&self, path: &str) -> hyper::Response<Body> {
        let (collection, ns, name) = status_target(path);
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
    pub fn lease(&self, method: &hyper::Method, rest: &str, body: &[u8]) -> hyper::Response<Body> {
        let response = self.lease_answer(method, rest, body);
        let holder = |v: &Value| v["spec"]["holderIdentity"].as_str().map(str::to_owned);
        let named = match method.as_str() {
            "GET" => {
                let state = self.state.lock().unwrap();
                let name = rest.split('/').nth(2).unwrap_or_default();
                state.leases.get(&format!("{}/{name}", rest.split('/').next().unwrap_or_default())).and_then(holder)
            }
            _ => serde_json::from_slice::<Value>(body).ok().as_ref().and_then(holder),
        };
        let code = response.status().as_u16();
        self.state.lock().unwrap().lease_log.push((method.to_string(), named, code));
        response
    }

    /// The Lease requests so far.
    pub fn lease_log(&self) -> Vec<(String, Option<String>, u16)> {
        self.state.lock().unwrap().lease_log.clone()
    }

    fn lease_answer(&self, method: &hyper::Method, rest: &str, body: &[u8]) -> hyper::Response<Body> {
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

    pub fn patches(&self, key: &str) -> Vec<Value> {
        self.state.lock().unwrap().patches.iter().filter(|(k, _)| k == key).map(|(_, b)| b.clone()).collect()
    }

    pub fn key(object: &Value) -> String {
        format!(
            "{}/{}",
            object["metadata"]["namespace"].as_str().unwrap_or_default(),
            object["metadata"]["name"].as_str().unwrap()
        )
    }

    /// Store an object; `notify` sends the watch event (else the change is missed, as
    /// during a watch outage).
    pub fn put(&self, collection: &str, mut object: Value, notify: bool) {
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

    pub fn delete(&self, collection: &str, key: &str, notify: bool) {
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
    pub fn expire(&self, collection: &str) {
        let mut state = self.state.lock().unwrap();
        let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": "too old resource version", "reason": "Expired", "code": 410}});
        state.send(collection, &gone);
        state.watchers.retain(|w| w.collection != collection);
    }

    pub fn watching(&self, collection: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .watchers
            .iter()
            .filter(|w| w.collection == collection && !w.events.is_closed())
            .count()
    }

    /// Refuse (`true`) or serve again (`false`) a collection's lists and watches.
    pub fn forbid(&self, collection: &str, forbidden: bool) {
        let mut state = self.state.lock().unwrap();
        if forbidden {
            state.forbidden.insert(collection.to_owned());
        } else {
            state.forbidden.remove(collection);
        }
    }

    pub fn lists(&self, collection: &str) -> Vec<String> {
        self.state.lock().unwrap().lists.iter().filter(|(c, _)| c == collection).map(|(_, q)| q.clone()).collect()
    }
}

impl ApiState {
    pub fn send(&mut self, collection: &str, event: &Value) {
        for w in self.watchers.iter().filter(|w| w.collection == collection) {
            if event["type"] == "ERROR" || selected(&event["object"], &w.field_selector, &w.label_selector) {
                let _ = w.events.send(event.clone());
            }
        }
    }
}

pub fn service(name: &str, port: u16) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "shop"}, "spec": {"ports": [{"name": "https", "port": port}]}})
}

pub fn secret(name: &str, kind: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "shop"}, "type": kind, "data": {"ca.crt": "eA=="}})
}

/// The EndpointSlice `<service>-1` in namespace shop: one ready address on port `port`
/// (named https).
pub fn slice(service: &str, port: u16, address: &str) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": format!("{service}-1"), "namespace": "shop", "labels": {"kubernetes.io/service-name": service}},
           "addressType": "IPv4", "ports": [{"name": "https", "port": port}], "endpoints": [{"addresses": [address]}]})
}

pub fn proxy(name: &str) -> Value {
    json!({"apiVersion": "projectcontour.io/v1", "kind": "HTTPProxy", "metadata": {"name": name, "namespace": "shop", "generation": 3},
           "spec": {"virtualhost": {"fqdn": "shop.example.com"}, "routes": [{"services": [{"name": "web", "port": 443}]}]}})
}

pub async fn keys(store: &async_nats::jetstream::kv::Store) -> Vec<String> {
    let mut keys: Vec<String> = store.keys().await.unwrap().map(|k| k.unwrap()).collect().await;
    keys.sort();
    keys
}

/// Wait until the bucket's keys are `want`.
pub async fn until_keys(store: &async_nats::jetstream::kv::Store, want: &[&str]) {
    let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    for _ in 0..200 {
        if keys(store).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(keys(store).await, want, "the bucket {} never held exactly these keys", store.name);
}

/// Wait until the bucket has `key`.
pub async fn until_keys_include(store: &async_nats::jetstream::kv::Store, key: &str) {
    for _ in 0..400 {
        if keys(store).await.iter().any(|k| k == key) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the bucket {} never held {key}", store.name);
}

pub async fn until<F: Fn() -> bool>(what: &str, f: F) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{what} never happened");
}

/// The watcher's Kubernetes source as the tests run it: quick debounce, all namespaces,
/// with `status` write-back when given.
pub fn kube_config(
    bus: &portico_bus::nats::ConnectConfig,
    status: Option<portico_watcher::status::StatusConfig>,
) -> portico_watcher::kubernetes::KubeConfig {
    portico_watcher::kubernetes::KubeConfig {
        bus: bus.clone(),
        namespaces: Vec::new(),
        holdoff: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
        status,
        envoy_signer: None,
        gateway_api: portico_watcher::kubernetes::GatewayApiMode::Off,
    }
}

/// A kube client for the fake API server.
pub fn client(api: &FakeApi) -> kube::Client {
    kube::Client::try_from(kube::Config::new(api.url.parse().unwrap())).unwrap()
}

/// The watcher's Kubernetes source (with status write-back), the secrets service and the
/// resolver, in process on one bus.
pub struct Pipeline {
    stop: tokio::sync::broadcast::Sender<()>,
    watcher: tokio::task::JoinHandle<Result<(), portico_watcher::service::ServiceError>>,
    secrets: tokio::task::JoinHandle<Result<(), portico_secrets::service::ServiceError>>,
    resolver: tokio::task::JoinHandle<Result<(), portico_resolver::service::ServiceError>>,
}

impl Pipeline {
    pub fn start(
        bus: &portico_bus::nats::ConnectConfig,
        client: kube::Client,
        status: portico_watcher::status::StatusConfig,
    ) -> Pipeline {
        Pipeline::start_with(kube_config(bus, Some(status)), client)
    }

    /// `start` with the watcher's configuration as given.
    pub fn start_with(config: portico_watcher::kubernetes::KubeConfig, client: kube::Client) -> Pipeline {
        let bus = config.bus.clone();
        let (stop, _) = tokio::sync::broadcast::channel::<()>(1);
        let until_stopped = |mut rx: tokio::sync::broadcast::Receiver<()>| async move {
            let _ = rx.recv().await;
        };
        let watcher = tokio::spawn(portico_watcher::kubernetes::run(config, client, until_stopped(stop.subscribe())));
        let secrets = tokio::spawn(portico_secrets::service::run(
            portico_secrets::service::ServiceConfig { bus: bus.clone(), revalidate_every: Duration::from_secs(3600) },
            until_stopped(stop.subscribe()),
        ));
        let mut resolver_config = portico_resolver::service::ServiceConfig::new(
            bus,
            portico_resolver::Config::default(),
            "resolver-test".into(),
        );
        resolver_config.holdoff = Duration::from_millis(20);
        let resolver = tokio::spawn(portico_resolver::service::run(resolver_config, until_stopped(stop.subscribe())));
        Pipeline { stop, watcher, secrets, resolver }
    }

    pub async fn stop(self) {
        self.stop.send(()).unwrap();
        let limit = Duration::from_secs(5);
        tokio::time::timeout(limit, self.watcher).await.expect("stops").unwrap().unwrap();
        tokio::time::timeout(limit, self.secrets).await.expect("stops").unwrap().unwrap();
        tokio::time::timeout(limit, self.resolver).await.expect("stops").unwrap().unwrap();
    }
}

/// The status writer as the tests run it: the Lease `portico/portico-watcher` held as
/// `identity` for `lease_seconds`, 50 patches a second, no publish address (struct update
/// for the rest).
pub fn status_config(identity: &str, lease_seconds: u64) -> portico_watcher::status::StatusConfig {
    portico_watcher::status::StatusConfig {
        lease_namespace: "portico".into(),
        lease_name: "portico-watcher".into(),
        identity: identity.into(),
        lease_duration: Duration::from_secs(lease_seconds),
        publish_address: None,
        max_per_second: 50,
    }
}
