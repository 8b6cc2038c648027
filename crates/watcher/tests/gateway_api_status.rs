//! Gateway API from the Kubernetes API (issue #12): the watcher's watches of the Gateway
//! API kinds and ConfigMaps (through the fake API server, kube's real client), and the
//! statuses written back: Portico's entries only (another controller's kept), conditions
//! with observedGeneration and lastTransitionTime, each written object valid against the
//! published CRD schema (vendored in testdata, checked with check-jsonschema).

mod fake_api;

use fake_api::*;
use portico_bus::nats::ConnectConfig;
use portico_testkit::NatsServer;
use serde_json::{json, Value};
use std::time::Duration;

/// The pipeline with the watcher watching the Gateway API when its CRDs are served.
fn start(bus: &ConnectConfig, api: &FakeApi) -> Pipeline {
    let status = portico_watcher::status::StatusConfig { max_per_second: 100, ..status_config("watcher-a", 3) };
    let mut config = kube_config(bus, Some(status));
    config.gateway_api = portico_watcher::kubernetes::GatewayApiMode::Auto;
    Pipeline::start_with(config, client(api))
}

fn object(api: &FakeApi, collection: &str, key: &str) -> Value {
    api.state.lock().unwrap().objects[collection][key].clone()
}

/// Validate an object with the published CRD's schema (the Standard-channel CRDs vendored
/// in testdata/gateway-api/v1.6.0), by check-jsonschema (scripts/setup.sh installs it).
fn crd_schema_accepts(object: &Value) {
    let schema = portico_testkit::gateway_api_schema(object["kind"].as_str().unwrap(), "v1");
    if let Err(said) = portico_testkit::check_schema(&schema, object) {
        panic!("the published schema refuses what Portico wrote:\n{said}\n{object:#}");
    }
}

/// Every condition has observedGeneration (the object's generation) and lastTransitionTime.
fn conditions_are_stamped(conditions: &Value, generation: i64) {
    for c in conditions.as_array().unwrap() {
        assert_eq!(c["observedGeneration"], generation, "{c}");
        assert!(c["lastTransitionTime"].as_str().is_some_and(|t| t.ends_with('Z')), "{c}");
    }
}

/// A self-signed CA certificate (rcgen), as a ConfigMap's `ca.crt` holds one.
fn ca_pem() -> String {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, "test CA");
    let key = rcgen::KeyPair::generate().unwrap();
    params.self_signed(&key).unwrap().pem()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_api_objects_are_watched_and_their_statuses_written_back_with_others_kept() {
    let nats = NatsServer::start();
    let bus = ConnectConfig { url: nats.url(), name: "test".into(), ..Default::default() };
    let api = FakeApi::start().await;
    api.state.lock().unwrap().gateway_api_served = true; // the CRDs are installed: auto watches
    api.put(SERVICES, service("web", 443), false);
    api.put("apis/discovery.k8s.io/v1/endpointslices", slice("web", 8443, "10.0.0.9"), false);
    api.put(
        GATEWAY_CLASSES,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
               "metadata": {"name": "portico", "generation": 1},
               "spec": {"controllerName": "portico.dev/gateway-controller"}}),
        false,
    );
    api.put(
        GATEWAYS,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
               "metadata": {"name": "edge", "namespace": "shop", "generation": 2},
               "spec": {"gatewayClassName": "portico", "listeners": [{"name": "http", "port": 8080, "protocol": "HTTP"}]}}),
        false,
    );
    // Another implementation already reports on the route: its entry must stay.
    let theirs = json!({"parentRef": {"name": "elsewhere"}, "controllerName": "example.com/other",
                        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                                        "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 5}]});
    api.put(
        HTTP_ROUTES,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
               "metadata": {"name": "web", "namespace": "shop", "generation": 5},
               "spec": {"parentRefs": [{"name": "edge"}, {"name": "elsewhere", "group": "example.com", "kind": "Mesh"}],
                        "hostnames": ["web.example.com"],
                        "rules": [{"backendRefs": [{"name": "web", "port": 443}]}]},
               "status": {"parents": [theirs.clone()]}}),
        false,
    );
    api.put(
        BACKEND_TLS_POLICIES,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "BackendTLSPolicy",
               "metadata": {"name": "web-tls", "namespace": "shop", "generation": 3},
               "spec": {"targetRefs": [{"group": "", "kind": "Service", "name": "web"}],
                        "validation": {"hostname": "web.shop.svc",
                                       "caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": "web-ca"}]}}}),
        false,
    );
    let pipeline = start(&bus, &api);

    // The policy's CA does not exist yet: NoValidCACertificate.
    until("the policy's status", || {
        object(&api, BACKEND_TLS_POLICIES, "shop/web-tls")["status"]["ancestors"].is_array()
    })
    .await;
    let policy = object(&api, BACKEND_TLS_POLICIES, "shop/web-tls");
    let ancestors = policy["status"]["ancestors"].as_array().unwrap();
    assert_eq!(ancestors.len(), 1, "{policy:#}");
    assert_eq!(ancestors[0]["ancestorRef"]["name"], "edge");
    assert_eq!(ancestors[0]["controllerName"], "portico.dev/gateway-controller");
    let accepted =
        ancestors[0]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Accepted").unwrap().clone();
    assert_eq!(
        (accepted["status"].as_str(), accepted["reason"].as_str()),
        (Some("False"), Some("NoValidCACertificate"))
    );
    conditions_are_stamped(&ancestors[0]["conditions"], 3);
    crd_schema_accepts(&policy);

    until("the route's status", || {
        object(&api, HTTP_ROUTES, "shop/web")["status"]["parents"].as_array().is_some_and(|p| p.len() == 2)
    })
    .await;
    let route = object(&api, HTTP_ROUTES, "shop/web");
    let parents = route["status"]["parents"].as_array().unwrap();
    assert_eq!(parents[0], theirs, "the other controller's entry is kept as it was");
    assert_eq!(parents[1]["parentRef"]["name"], "edge");
    conditions_are_stamped(&parents[1]["conditions"], 5);
    crd_schema_accepts(&route);

    until("the Gateway's status", || object(&api, GATEWAYS, "shop/edge")["status"]["listeners"].is_array()).await;
    let gateway = object(&api, GATEWAYS, "shop/edge");
    assert_eq!(gateway["status"]["listeners"][0]["attachedRoutes"], 1, "{gateway:#}");
    conditions_are_stamped(&gateway["status"]["conditions"], 2);
    conditions_are_stamped(&gateway["status"]["listeners"][0]["conditions"], 2);
    crd_schema_accepts(&gateway);

    until("the GatewayClass's status", || object(&api, GATEWAY_CLASSES, "/portico")["status"]["conditions"].is_array())
        .await;
    let class = object(&api, GATEWAY_CLASSES, "/portico");
    conditions_are_stamped(&class["status"]["conditions"], 1);
    crd_schema_accepts(&class);

    // The ConfigMap appears (through its watch): the policy is accepted, and Accepted's
    // lastTransitionTime moves while ResolvedRefs's... moves too (both flipped).
    let before = accepted["lastTransitionTime"].clone();
    tokio::time::sleep(Duration::from_millis(1100)).await; // timestamps have whole seconds
    api.put(
        CONFIG_MAPS,
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web-ca", "namespace": "shop"},
               "data": {"ca.crt": ca_pem(), "other": "not trust material"}}),
        true,
    );
    until("the policy accepted", || {
        object(&api, BACKEND_TLS_POLICIES, "shop/web-tls")["status"]["ancestors"][0]["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["type"] == "Accepted" && c["status"] == "True"))
    })
    .await;
    let policy = object(&api, BACKEND_TLS_POLICIES, "shop/web-tls");
    let accepted = &policy["status"]["ancestors"][0]["conditions"][0];
    assert_ne!(accepted["lastTransitionTime"], before, "Accepted flipped: a new transition time");
    crd_schema_accepts(&policy);
    // The route's Accepted did not flip: its transition time stays.
    let route_after = object(&api, HTTP_ROUTES, "shop/web");
    assert_eq!(
        route_after["status"]["parents"][1]["conditions"][0]["lastTransitionTime"],
        parents[1]["conditions"][0]["lastTransitionTime"]
    );
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_gateway_api_crds_auto_leaves_its_kinds_unwatched_and_the_rest_works() {
    let nats = NatsServer::start();
    let bus = ConnectConfig { url: nats.url(), name: "test".into(), ..Default::default() };
    let api = FakeApi::start().await;
    api.put(SERVICES, service("web", 443), false);
    let pipeline = start(&bus, &api);
    let js = async_nats::jetstream::new(portico_bus::nats::connect(&bus).await.unwrap());
    let buckets = portico_bus::nats::ensure_buckets(&js).await.unwrap();
    // The barrier: every kind's initial sync is published (the Gateway API kinds' too: they
    // have no watch to wait for), and the Service reached the bus.
    until_keys_include(&buckets.objects, "sync.httproute").await;
    until_keys_include(&buckets.objects, "service.shop.web").await;
    for collection in [GATEWAY_CLASSES, GATEWAYS, HTTP_ROUTES, REFERENCE_GRANTS, BACKEND_TLS_POLICIES, CONFIG_MAPS] {
        assert!(api.lists(collection).is_empty(), "{collection} was listed");
    }
    assert!(!api.lists(SERVICES).is_empty());
    pipeline.stop().await;
}
