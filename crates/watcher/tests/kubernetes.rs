//! The Kubernetes source against a fake API server that speaks the real list/watch protocol
//! over HTTP (lists with resourceVersions, chunked watch streams, bookmarks, `410 Gone`),
//! so kube's real client and kube-runtime's watcher run unchanged, and a real nats-server.
//!
//! Checked: the initial lists reach the bus with every kind's sync marker; only Secrets of
//! the accepted types are asked for (by field selector) and published, to their own
//! bucket; watch events (add, modify, delete) follow; a `410 Gone` makes the watcher
//! relist, and changes it missed meanwhile are applied without losing or duplicating.

mod fake_api;

use fake_api::*;
use portico_bus::nats::{connect, ensure_buckets, Buckets, ConnectConfig};
use portico_testkit::NatsServer;
use portico_watcher::kubernetes::run;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

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

    let client = client(&api);
    let config = kube_config(&bus, None);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run(config, client, async move {
        let _ = stopped.await;
    }));

    let buckets: Buckets = ensure_buckets(&async_nats::jetstream::new(connect(&bus).await.unwrap())).await.unwrap();
    // Every kind's marker: the Gateway API kinds (not watched here) have no list to wait for.
    let synced: Vec<&str> = vec![
        "service.shop.web",
        "sync.backendtlspolicy",
        "sync.configmap",
        "sync.endpointslice",
        "sync.gateway",
        "sync.gatewayclass",
        "sync.httpproxy",
        "sync.httproute",
        "sync.ingress",
        "sync.ingressclass",
        "sync.referencegrant",
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

    let client = client(&api);
    let status = status_config("watcher-a", 3);
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
    let lease = api.state.lock().unwrap().leases.get("portico/portico-watcher").cloned().expect("a Lease");
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
            "metadata": {"name": "portico-watcher", "namespace": "portico", "resourceVersion": state.resource_version.to_string()},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 2}
        });
        state.leases.insert("portico/portico-watcher".into(), lease);
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

    let client = client(&api);
    let status = status_config("watcher-a", 2);
    let pipeline = Pipeline::start(&bus, client, status);
    let buckets: Buckets = ensure_buckets(&async_nats::jetstream::new(connect(&bus).await.unwrap())).await.unwrap();
    let shop_key = "httpproxy.shop.shop";

    // While watcher-b renews, watcher-a neither publishes objects nor writes statuses.
    // Barrier: watcher-a has listed the HTTPProxies and stepped its lease twice since.
    until("watcher-a's list of HTTPProxies", || !api.lists(PROXIES).is_empty()).await;
    let steps = api.lease_log().len();
    until("two lease steps of the standby", || api.lease_log().len() >= steps + 2).await;
    assert_eq!(keys(&buckets.objects).await, Vec::<String>::new(), "a standby published objects");
    assert!(api.patches("shop/shop").is_empty(), "a standby wrote a status");

    // watcher-b stops renewing: after the lease duration watcher-a takes over, publishes
    // the objects, and writes the status the resolver makes of them.
    other.store(false, std::sync::atomic::Ordering::SeqCst);
    until("watcher-a to take over and write", || api.patches("shop/shop").len() == 1).await;
    until_keys_include(&buckets.objects, "httpproxy.shop.shop").await;
    let lease = api.state.lock().unwrap().leases["portico/portico-watcher"].clone();
    assert_eq!(lease["spec"]["holderIdentity"], "watcher-a");

    // Fencing. Right after one of watcher-a's renewals, watcher-b takes the Lease behind
    // its back (what a holder that stalled past its lease wakes up to) and a status
    // changes at once, well before watcher-a's next periodic lease step: the renewal that
    // precedes every batch finds the Lease taken, and nothing is written.
    let renewals = |log: &[(String, Option<String>, u16)]| {
        log.iter().filter(|(m, who, code)| m == "PUT" && who.as_deref() == Some("watcher-a") && *code == 200).count()
    };
    let before = renewals(&api.lease_log());
    until("a renewal by watcher-a", || renewals(&api.lease_log()) > before).await;
    other.store(true, std::sync::atomic::Ordering::SeqCst);
    api.renew_foreign_lease("watcher-b");
    // The status changes on the bus (written here as the resolver would: watcher-a, now
    // standing by, publishes no object change that would make the resolver do it).
    let entry = buckets.status.entry(shop_key).await.unwrap().unwrap();
    let (mut status, trace) = portico_bus::open::<portico_model::ObjectStatus>(&entry.value).unwrap();
    status.problems.clear();
    buckets.status.put(shop_key, portico_bus::seal(&status, &trace).into()).await.unwrap();
    // Barrier: watcher-a has stepped its lease three more times (a write in the same step
    // as the failed fence would be done by then).
    let steps = api.lease_log().len();
    until("three more lease requests of watcher-a", || api.lease_log().len() >= steps + 3).await;
    assert_eq!(api.patches("shop/shop").len(), 1, "a writer whose lease was taken wrote a status");

    renewer.abort();
    pipeline.stop().await;
}

/// A watcher replica alone (no resolver): `run` until stopped.
struct Replica {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), portico_watcher::service::ServiceError>>,
}

impl Replica {
    fn start(bus: &ConnectConfig, api: &FakeApi, identity: &str) -> Replica {
        let status = status_config(identity, 2);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run(kube_config(bus, Some(status)), client(api), async move {
            let _ = stopped.await;
        }));
        Replica { stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(5), self.task).await.expect("stops").unwrap().unwrap();
    }
}

/// How many writes the objects bucket has taken (its stream's last sequence).
async fn writes(buckets: &Buckets) -> u64 {
    let mut stream = buckets.objects.stream.clone();
    stream.info().await.unwrap().state.last_sequence
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_watcher_replicas_one_publishes_and_the_other_takes_over_when_it_goes() {
    let nats = NatsServer::start();
    let bus = ConnectConfig { url: nats.url(), name: "test".into(), ..Default::default() };
    let api = FakeApi::start().await;
    shop_with_missing_ca(&api);
    let buckets: Buckets = ensure_buckets(&async_nats::jetstream::new(connect(&bus).await.unwrap())).await.unwrap();

    let a = Replica::start(&bus, &api, "watcher-a");
    // The markers are written in `Kind::ALL`'s order, after the objects: the last kind's
    // marker is the barrier for every write of the first pass.
    let last = portico_bus::names::sync_key(*portico_model::Kind::ALL.last().unwrap());
    until_keys_include(&buckets.objects, &last).await;
    until_keys_include(&buckets.objects, "httpproxy.shop.shop").await;
    let lease = || api.state.lock().unwrap().leases["portico/portico-watcher"]["spec"]["holderIdentity"].clone();
    assert_eq!(lease(), "watcher-a");
    let before = writes(&buckets).await;

    // A second replica: it watches too, and publishes nothing while watcher-a is active.
    // Barrier: both watch Services, a new Service is published (by watcher-a), and the
    // replicas have stepped the Lease four more times.
    let b = Replica::start(&bus, &api, "watcher-b");
    until("both replicas watching Services", || api.watching(SERVICES) >= 2).await;
    api.put(SERVICES, service("api", 443), true);
    until_keys_include(&buckets.objects, "service.shop.api").await;
    let steps = api.lease_log().len();
    until("four more lease steps", || api.lease_log().len() >= steps + 4).await;
    assert_eq!(writes(&buckets).await, before + 1, "one write for the one change: only the active replica publishes");
    assert_eq!(lease(), "watcher-a");

    // watcher-a goes: once its Lease is a lease duration silent, watcher-b takes over and
    // publishes what changed since.
    a.stop().await;
    api.put(SERVICES, service("late", 443), true);
    until_keys_include(&buckets.objects, "service.shop.late").await;
    assert_eq!(lease(), "watcher-b");
    b.stop().await;
}

fn ingress(name: &str, class: &str, annotations: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
           "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"), "annotations": annotations},
           "spec": {"ingressClassName": class, "rules": [{"host": format!("{name}.example.com"), "http": {"paths": [
               {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 443}}}}]}}]}})
}

fn events(api: &FakeApi, name: &str) -> Vec<Value> {
    let state = api.state.lock().unwrap();
    state.events.iter().filter(|(_, e)| e["regarding"]["name"] == name).map(|(_, e)| e.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubernetes_ingress_is_told_its_problems_by_events_and_gets_its_load_balancer_address() {
    let nats = NatsServer::start();
    let bus = ConnectConfig { url: nats.url(), name: "test".into(), ..Default::default() };
    let api = FakeApi::start().await;
    api.put(SERVICES, service("web", 443), false);
    api.put("apis/discovery.k8s.io/v1/endpointslices", slice("web", 8443, "10.0.0.9"), false);
    api.put(
        INGRESS_CLASSES,
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass", "metadata": {"name": "portico"},
               "spec": {"controller": "portico.dev/ingress-controller"}}),
        false,
    );
    api.put(
        INGRESSES,
        ingress("app", "portico", json!({"nginx.ingress.kubernetes.io/backend-protocol": "FCGI"})),
        false,
    );
    api.put(
        INGRESSES,
        ingress("theirs", "nginx", json!({"nginx.ingress.kubernetes.io/backend-protocol": "FCGI"})),
        false,
    );
    let status = portico_watcher::status::StatusConfig {
        publish_address: Some("203.0.113.7".into()),
        ..status_config("watcher-a", 3)
    };
    let pipeline = Pipeline::start(&bus, client(&api), status);

    until("an event on shop/app", || !events(&api, "app").is_empty()).await;
    let first = events(&api, "app");
    assert_eq!(first.len(), 1, "{first:?}");
    let event = &first[0];
    assert_eq!(event["apiVersion"], "events.k8s.io/v1");
    assert_eq!((event["type"].as_str(), event["reason"].as_str()), (Some("Warning"), Some("PorticoError")));
    assert_eq!(
        event["note"],
        "annotation nginx.ingress.kubernetes.io/backend-protocol: unsupported backend-protocol \"FCGI\""
    );
    assert_eq!(event["regarding"]["kind"], "Ingress");
    assert_eq!(event["regarding"]["apiVersion"], "networking.k8s.io/v1");
    assert_eq!(event["regarding"]["uid"], "uid-app");
    assert_eq!(event["reportingController"], "portico-watcher");
    // What the API server would take: the typed Event and IngressStatus (k8s-openapi's).
    let typed: k8s_openapi::api::events::v1::Event =
        serde_json::from_value(event.clone()).expect("an events.k8s.io/v1 Event");
    assert!(typed.event_time.is_some() && typed.reporting_instance.as_deref() == Some("watcher-a"));
    until("the load balancer of shop/app", || !api.patches("shop/app").is_empty()).await;
    assert_eq!(
        api.patches("shop/app")[0],
        json!({"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}}}),
        "the configured address, and nothing else of the status"
    );
    let _: k8s_openapi::api::networking::v1::IngressStatus =
        serde_json::from_value(api.patches("shop/app")[0]["status"].clone()).expect("an IngressStatus");

    // Fixed: one more event, that it is served.
    until("the Ingress watch", || api.watching(INGRESSES) > 0).await;
    api.put(
        INGRESSES,
        ingress("app", "portico", json!({"nginx.ingress.kubernetes.io/backend-protocol": "HTTPS"})),
        true,
    );
    until("a second event on shop/app", || events(&api, "app").len() > 1).await;
    let second = &events(&api, "app")[1];
    assert_eq!(second["reason"], "PorticoWarning", "{second}");
    assert_eq!(second["note"], "backend TLS is not verified: set proxy-ssl-verify: \"on\"");

    // Another controller's Ingress got nothing (checked after the later events above).
    assert!(events(&api, "theirs").is_empty());
    assert!(api.patches("shop/theirs").is_empty());
    pipeline.stop().await;
}
