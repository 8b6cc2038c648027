//! The front half of the pipeline as separate services over a real nats-server, in
//! process: watcher (files) → secrets → resolver → model and statuses on the bus. Then a
//! fix arrives through a file edit, and the active resolver is stopped so a standby
//! takes over.

use portico_bus::nats::{connect, ensure_buckets, Buckets, ConnectConfig};
use portico_bus::{open, LeaseRecord, ModelRecord};
use portico_model::{ContourStatus, ObjectStatus};
use portico_resolver::service::{run, ServiceConfig};
use portico_resolver::Config;
use portico_testkit::{eventually, repo, NatsServer};
use std::time::Duration;
use tokio::sync::oneshot;

type Stop = oneshot::Sender<()>;

fn stopper() -> (Stop, impl std::future::Future<Output = ()>) {
    let (tx, rx) = oneshot::channel::<()>();
    (tx, async move {
        let _ = rx.await;
    })
}

async fn model(buckets: &Buckets) -> Option<ModelRecord> {
    portico_bus::model::read_current(buckets).await.unwrap()
}

async fn status(buckets: &Buckets, key: &str) -> Option<ContourStatus> {
    let raw = buckets.status.get(key).await.unwrap()?;
    Some(open::<ObjectStatus>(&raw).unwrap().0.to_contour())
}

/// The resolvers' log events (message and `instance`), recorded by a subscriber of the
/// test process: how the test knows what a standby did without waiting a fixed time.
fn resolver_log() -> &'static std::sync::Mutex<Vec<(String, String)>> {
    use tracing_subscriber::layer::SubscriberExt;
    static LOG: std::sync::OnceLock<std::sync::Mutex<Vec<(String, String)>>> = std::sync::OnceLock::new();
    struct Recorder;
    #[derive(Default)]
    struct Fields(String, String);
    impl tracing::field::Visit for Fields {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            match field.name() {
                "message" => self.0 = format!("{value:?}"),
                "instance" => self.1 = format!("{value:?}"),
                _ => {}
            }
        }
    }
    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Recorder {
        fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
            if event.metadata().target().starts_with("portico_resolver") {
                let mut fields = Fields::default();
                event.record(&mut fields);
                resolver_log().lock().unwrap().push((fields.0, fields.1));
            }
        }
    }
    LOG.get_or_init(|| {
        let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Recorder));
        std::sync::Mutex::new(Vec::new())
    })
}

fn logged(message: &str, instance: &str) -> bool {
    resolver_log().lock().unwrap().iter().any(|(m, i)| m == message && i == instance)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_to_model_and_statuses_through_the_services_with_a_standby_taking_over() {
    resolver_log(); // record from the start
    let server = NatsServer::start();
    let bus = ConnectConfig { url: server.url(), name: "test".into(), ..Default::default() };
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(repo().join("examples/upstream-tls")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }

    let (stop_watcher, watcher_stopped) = stopper();
    let watcher = tokio::spawn(portico_watcher::service::run(
        portico_watcher::service::ServiceConfig {
            paths: vec![dir.path().to_owned()],
            bus: bus.clone(),
            poll_every: Duration::from_millis(50),
            rescan_every: Duration::from_secs(3600),
        },
        watcher_stopped,
    ));
    let (stop_secrets, secrets_stopped) = stopper();
    let secrets = tokio::spawn(portico_secrets::service::run(
        portico_secrets::service::ServiceConfig { bus: bus.clone(), revalidate_every: Duration::from_secs(3600) },
        secrets_stopped,
    ));
    let resolver_config = |instance: &str| {
        let mut c = ServiceConfig::new(bus.clone(), Config::default(), instance.into());
        c.lease_ttl = Duration::from_millis(600);
        c
    };
    let (stop_a, a_stopped) = stopper();
    let a = tokio::spawn(run(resolver_config("a"), a_stopped));

    let client = connect(&bus).await.unwrap();
    let buckets = ensure_buckets(&async_nats::jetstream::new(client)).await.unwrap();
    let proxy = "httpproxy.shop.storefront";
    eventually("the first model and the broken route's status", || async {
        model(&buckets).await.is_some() && status(&buckets, proxy).await.is_some()
    })
    .await;
    let first = model(&buckets).await.unwrap();
    assert_eq!(first.model.routes().count(), 6, "the example's six routes");
    assert_eq!(first.model.trust.len(), 3, "with verdicts for the three CA secrets (the sync waited for them)");
    let s = status(&buckets, proxy).await.unwrap();
    assert_eq!(
        s.description,
        "route \"/legacy\": service \"storefront\": upstreamValidation requested but secret not found or misconfigured"
    );
    assert_eq!(status(&buckets, "voyageringress.default.test-ingress").await.unwrap().current_status, "valid");

    // A standby starts; it must not publish while "a" holds the lease.
    let (stop_b, b_stopped) = stopper();
    let b = tokio::spawn(run(resolver_config("b"), b_stopped));
    // Barrier: b has read everything and reached the point where it would publish.
    eventually("b to stand by with a full view", || async { logged("standing by: not publishing", "b") }).await;
    let holder = |raw: Option<bytes::Bytes>| raw.map(|r| open::<LeaseRecord>(&r).unwrap().0.holder);
    assert_eq!(holder(buckets.leases.get("resolver").await.unwrap()).as_deref(), Some("a"));
    assert_eq!(model(&buckets).await.unwrap().version(), first.version(), "the standby published nothing");

    // Stop the active resolver; the standby takes over and a later change still arrives.
    stop_a.send(()).unwrap();
    a.await.unwrap().unwrap();
    eventually("b holds the lease", || async {
        holder(buckets.leases.get("resolver").await.unwrap()).as_deref() == Some("b")
    })
    .await;
    // Fix the broken route by adding the missing CA secret (same CA as the storefront's).
    let shop = std::fs::read_to_string(dir.path().join("20-shop-contour.yaml")).unwrap();
    let ca = shop.split("ca.crt: ").nth(1).unwrap().lines().next().unwrap().to_owned();
    std::fs::write(
        dir.path().join("40-legacy-ca.yaml"),
        format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: legacy-ca, namespace: shop}}\ntype: Opaque\ndata:\n  ca.crt: {ca}\n"),
    )
    .unwrap();
    eventually("the route is fixed through the standby", || async {
        status(&buckets, proxy).await.is_some_and(|s| s.current_status == "valid")
    })
    .await;
    let fixed = model(&buckets).await.unwrap();
    assert!(fixed.generation > first.generation, "generations keep increasing across the takeover");
    assert!(fixed.model.routes().all(|(_, _, r)| r.action != portico_model::RouteAction::Reject));

    for stop in [stop_b, stop_secrets, stop_watcher] {
        stop.send(()).unwrap();
    }
    b.await.unwrap().unwrap();
    secrets.await.unwrap().unwrap();
    watcher.await.unwrap().unwrap();
}
